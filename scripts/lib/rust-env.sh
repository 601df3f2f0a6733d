# scripts/lib/rust-env.sh: sourced by the scripts that run cargo. rustup's installer puts its
# proxies in $CARGO_HOME/bin (default ~/.cargo/bin) without touching this shell's PATH, so a
# machine where scripts/setup just installed rustup still finds cargo here.
# shellcheck shell=bash
_elvisor_cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
case ":$PATH:" in
    *":$_elvisor_cargo_bin:"*) ;;
    *) [ -d "$_elvisor_cargo_bin" ] && PATH="$_elvisor_cargo_bin:$PATH" ;;
esac
export PATH
unset _elvisor_cargo_bin

# toolchain_list KEY: the entries of `KEY = [...]` in rust-toolchain.toml, one a line
# (the file is the one list of what the build needs; nothing else repeats it).
toolchain_list() {
    sed -n "/^$1[[:space:]]*=/,/]/p" rust-toolchain.toml | tr -d '\n' |
        sed 's/^[^[]*\[//; s/\].*$//' | tr ',' '\n' | tr -d ' "\t' | grep -v '^$' || true
}
# toolchain_channel: the `channel = "..."` of rust-toolchain.toml.
toolchain_channel() {
    sed -n 's/^channel[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' rust-toolchain.toml
}
