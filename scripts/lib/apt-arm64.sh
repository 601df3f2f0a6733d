# scripts/lib/apt-arm64.sh: the private arm64 apt state under build/apt (sourced by scripts/setup).
#
# Debian arm64 packages (the guest kernel, busybox, the Raspberry Pi boot material) are fetched
# with `apt-get download` and unpacked with dpkg-deb; dpkg's architecture list and the host's
# apt lists are never touched. The state reads the host's sources (/etc/apt/sources.list.d:
# bookworm, -updates, -security, -backports) plus one private list that adds bookworm's
# non-free-firmware component, where the Raspberry Pi firmware (raspi-firmware) lives.
#
#   arm64_apt_init ROOT    sets APT_DIR and the array ARM64_APT (options for apt-get/apt-cache)
#   arm64_apt_update       apt-get update on that state (once per call of the script)

arm64_apt_init() {
    APT_DIR="$1/build/apt"
    mkdir -p "$APT_DIR/state/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/etc"
    touch "$APT_DIR/state/status"
    printf 'deb http://deb.debian.org/debian bookworm non-free-firmware\n' >"$APT_DIR/etc/sources.list"
    # APT::Sandbox::User=root: the private cache is not readable by _apt (harmless warning).
    ARM64_APT=(-o "Dir::State=$APT_DIR/state" -o "Dir::State::status=$APT_DIR/state/status"
        -o APT::Sandbox::User=root -o "Dir::Cache=$APT_DIR/cache"
        -o "Dir::Etc::SourceList=$APT_DIR/etc/sources.list"
        -o APT::Architecture=arm64 -o APT::Architectures=arm64)
}

arm64_apt_update() {
    apt-get "${ARM64_APT[@]}" -qq update
}
