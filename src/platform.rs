//! Host device tree -> platform description.
//!
//! The EL2 kernel learns everything about the machine from the DTB it was booted with (x0):
//! RAM and reserved memory, CPUs, the GIC and its frames, the console UART, the timer PPIs,
//! the PSCI conduit and the VM configuration nodes under /chosen. A DTB that lacks something
//! required fails with a [`PlatformError`] that names the node and the property.
//!
//! The blob is untrusted input, read by the small zero-copy reader below (`Dtb`, `Node`)
//! rather than the `fdt` crate: fdt 0.1.5 `assert`s, `unwrap`s and slices unchecked on
//! malformed blobs, and it cannot walk `FDT_NOP` tokens between nodes. Those are legal, and QEMU
//! leaves hundreds of them in the DTB it hands a `raspi4b` guest (it deletes the nodes of
//! devices it does not model with libfdt's `fdt_nop_node`): fdt 0.1.5 panics iterating that
//! tree's root. The reader checks the header and every token once (`Dtb::new`), then
//! bounds-checks every read anyway. The tests keep the `fdt` crate as an independent oracle.
//!
//! Addresses are translated to CPU physical addresses through every ancestor's `ranges`
//! (Devicetree Specification v0.4, 2.3.8): the Raspberry Pi 4 puts its devices under /soc, whose
//! `ranges` maps bus address 0x7e00_0000 to 0xfe00_0000 and 0x4000_0000 to 0xff80_0000.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::ops::ControlFlow;

use crate::mm::{BLOCK_2M, PhysAddr, PhysRange};
use crate::vm::config::{Passthrough, VmConfig};

/// How a secondary CPU is started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EnableMethod {
    /// PSCI CPU_ON through the firmware conduit.
    Psci,
    /// Spin table: write the entry point to `release_addr`, then SEV.
    SpinTable { release_addr: PhysAddr },
}

/// A physical CPU as listed under /cpus.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cpu {
    /// The `reg` value: MPIDR_EL1 affinity fields (Aff3 in bits 39:32, Aff2..Aff0 in 23:0).
    pub mpidr: u64,
    pub enable_method: EnableMethod,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GicVersion {
    V2,
    V3,
}

/// The physical interrupt controller.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Gic {
    pub version: GicVersion,
    /// Distributor.
    pub gicd: PhysRange,
    /// GICv3 redistributor regions (empty on GICv2).
    pub gicr: Vec<PhysRange>,
    /// GICv2 CPU interface (also present on some GICv3 systems for legacy; optional).
    pub gicc: Option<PhysRange>,
    /// GICv2 virtual interface control (GICH).
    pub gich: Option<PhysRange>,
    /// GICv2 virtual CPU interface (GICV).
    pub gicv: Option<PhysRange>,
    /// Maintenance interrupt, as an INTID (PPI 9 -> 25).
    pub maintenance_intid: Option<u32>,
}

/// Architected timer interrupts, as INTIDs (PPI n -> 16 + n).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Timer {
    pub secure_phys_intid: u32,
    pub phys_intid: u32,
    pub virt_intid: u32,
    pub hyp_phys_intid: u32,
    /// EL2 virtual timer (ARMv8.1 VHE), when the DT lists a fifth interrupt.
    pub hyp_virt_intid: Option<u32>,
}

/// The console UART (from /chosen stdout-path).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Uart {
    /// Path of the node, for diagnostics.
    pub path: String,
    pub base: PhysAddr,
    pub size_bytes: u64,
    /// Its interrupt, as an INTID, if the node has one.
    pub intid: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PsciConduit {
    Smc,
    Hvc,
}

/// Everything the kernel needs to know about the machine.
#[derive(Clone, Debug)]
pub struct Platform {
    /// Usable RAM as listed by the memory nodes (before reservations).
    pub ram: Vec<PhysRange>,
    /// Memory that must not be handed out: /memreserve/ entries, /reserved-memory children,
    /// the DTB itself, the hypervisor image and every VM module. Sorted by base.
    pub reserved: Vec<PhysRange>,
    pub cpus: Vec<Cpu>,
    pub gic: Gic,
    pub uart: Uart,
    pub timer: Timer,
    /// PSCI conduit from /psci `method`; `None` when the DT has no PSCI node (e.g. raspi4b).
    pub psci: Option<PsciConduit>,
    /// /chosen `bootargs` of the host (the hypervisor's command line), empty if absent.
    pub bootargs: String,
    /// /chosen `rng-seed` of the host (firmware or QEMU entropy), empty if absent.
    pub rng_seed: Vec<u8>,
    /// VMs described under /chosen (nodes compatible with "elvisor,vm").
    pub vms: Vec<VmConfig>,
}

/// A missing or malformed piece of the host device tree.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PlatformError {
    /// Path of the node, e.g. "/cpus/cpu@0".
    pub node: String,
    /// The property, e.g. "reg"; empty when the node itself is missing.
    pub property: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.property.is_empty() {
            write!(f, "device tree node {}: {}", self.node, self.problem)
        } else {
            write!(
                f,
                "device tree node {} property \"{}\": {}",
                self.node, self.property, self.problem
            )
        }
    }
}

impl PlatformError {
    fn new(node: &str, property: &str, problem: impl Into<String>) -> Self {
        Self {
            node: node.to_string(),
            property: property.to_string(),
            problem: problem.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// Reads the `totalsize` field of an FDT header after checking its magic.
///
/// `dtb_ptr_bytes` needs to cover only the first 8 bytes of the header; the boot code uses the
/// result to build the slice over the whole blob from x0.
pub fn fdt_total_size(dtb_ptr_bytes: &[u8]) -> Option<usize> {
    if be32(dtb_ptr_bytes, 0)? != FDT_MAGIC {
        return None;
    }
    let total = usize::try_from(be32(dtb_ptr_bytes, 4)?).ok()?;
    (total >= FDT_HEADER_BYTES).then_some(total)
}

/// The base of the console PL011 named by /chosen `stdout-path`, translated through `ranges`.
///
/// Allocation-free: it runs before the heap exists, e.g. to report that the image was entered
/// at EL1. Falls back to the lowest-numbered `serialN` alias that names an enabled PL011 when
/// `stdout-path` names some other UART (the Raspberry Pi 4 DTB names the mini-UART).
pub fn early_console(dtb: &[u8]) -> Option<PhysAddr> {
    let dtb = Dtb::new(dtb).ok()?;
    let console = console_node(&dtb).ok()?;
    let (base, _) = reg(&console, 0).ok()??;
    Some(PhysAddr(base))
}

/// The host's /chosen `bootargs`, if present and a valid string. Allocation-free.
pub fn early_bootargs(dtb: &[u8]) -> Option<&str> {
    let dtb = Dtb::new(dtb).ok()?;
    let chosen = lookup(&dtb, "/chosen")?;
    str_prop(chosen.node(), "bootargs").ok()?
}

/// The PSCI conduit named by the host's /psci node, if there is a valid one. Allocation-free:
/// it lets a configuration error that stops the boot still power the machine off the way every
/// other stop does.
pub fn early_psci(dtb: &[u8]) -> Option<PsciConduit> {
    let dtb = Dtb::new(dtb).ok()?;
    parse_psci(&dtb).ok()?
}

/// Parses the host device tree.
///
/// `dtb` is the blob (at least `totalsize` bytes), `dtb_pa` the physical address it lives at and
/// `image` the hypervisor image; both are added to [`Platform::reserved`], as are the
/// /memreserve/ entries, the /reserved-memory children and every VM module.
pub fn parse(dtb: &[u8], dtb_pa: PhysAddr, image: PhysRange) -> Result<Platform, PlatformError> {
    let dt = Dtb::new(dtb).map_err(|problem| PlatformError::new("/", "", problem))?;
    let blob = dt.blob;
    let root = Lineage::root(&dt).ok_or_else(|| PlatformError::new("/", "", "no root node"))?;

    let ram = parse_memory(&root)?;
    let dtb_range = PhysRange::new(dtb_pa, blob.len() as u64);

    let mut reserved = memreserve(blob).map_err(|problem| {
        PlatformError::new("/", "", format!("memory reservation block: {problem}"))
    })?;
    parse_reserved_memory(&dt, &mut reserved)?;
    // A VM module must not overlap anything reserved so far.
    let mut forbidden: Vec<(PhysRange, &'static str)> = reserved
        .iter()
        .map(|r| (*r, "memory reserved by the host device tree"))
        .collect();
    forbidden.push((dtb_range, "the host device tree"));
    forbidden.push((image, "the hypervisor image"));
    reserved.push(dtb_range);
    reserved.push(image);

    let cpus = parse_cpus(&dt)?;
    let (gic, gic_node) = parse_gic(&root)?;
    let timer = parse_timer(&root, &gic_node)?;
    let uart = parse_uart(&dt, &gic_node)?;
    let psci = parse_psci(&dt)?;

    let chosen = lookup(&dt, "/chosen");
    let bootargs = match &chosen {
        Some(chosen) => str_prop(chosen.node(), "bootargs")
            .map_err(|problem| PlatformError::new("/chosen", "bootargs", problem))?
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    };
    let rng_seed = chosen
        .as_ref()
        .and_then(|c| prop(c.node(), "rng-seed"))
        .map(<[u8]>::to_vec)
        .unwrap_or_default();

    let mut vms: Vec<VmConfig> = Vec::new();
    if let Some(chosen) = &chosen {
        let limits = VmLimits {
            dt: &dt,
            gic: &gic_node,
            host_cpus: cpus.len(),
            ram: &ram,
            forbidden: &forbidden,
        };
        let mut lin = *chosen;
        for child in chosen.node().children() {
            if !compatible_with(child, &["elvisor,vm"]) || !is_enabled(child) || !lin.push(child) {
                continue;
            }
            let vm = parse_vm(&lin, &limits);
            lin.pop();
            let vm = vm?;
            if let Some(other) = vms.iter().find(|other| other.name == vm.name) {
                return Err(PlatformError::new(
                    &vm.node_path,
                    "elvisor,name",
                    format!(
                        "name \"{}\" is already used by {}",
                        vm.name, other.node_path
                    ),
                ));
            }
            reserved.push(vm.kernel);
            reserved.extend(vm.ramdisk);
            vms.push(vm);
        }
    }
    reserved.sort_by_key(|r| (r.base, r.size_bytes));

    Ok(Platform {
        ram,
        reserved,
        cpus,
        gic,
        uart,
        timer,
        psci,
        bootargs,
        rng_seed,
        vms,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading the blob (Devicetree Specification v0.4, chapter 5: flattened format)
// ---------------------------------------------------------------------------------------------

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_HEADER_BYTES: usize = 40;
const FDT_BEGIN_NODE: u32 = 0x1;
const FDT_END_NODE: u32 = 0x2;
const FDT_PROP: u32 = 0x3;
const FDT_NOP: u32 = 0x4;
const FDT_END: u32 = 0x9;

/// Deepest node nesting accepted (root = 1). Real trees stay below 10; [`Lineage`] keeps a
/// `MAX_DEPTH`-entry stack and [`visit`] recurses once per level.
const MAX_DEPTH: usize = 16;

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let cell: [u8; 4] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(cell))
}

fn be64(bytes: &[u8], offset: usize) -> Option<u64> {
    let end = offset.checked_add(8)?;
    let cells: [u8; 8] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u64::from_be_bytes(cells))
}

fn align4(n: usize) -> Option<usize> {
    Some(n.checked_add(3)? & !3)
}

/// The header fields we use, as byte offsets and lengths into the blob.
struct Header {
    total: usize,
    off_struct: usize,
    size_struct: usize,
    off_strings: usize,
    size_strings: usize,
    off_rsvmap: usize,
}

fn header(dtb: &[u8]) -> Result<Header, &'static str> {
    let total = fdt_total_size(dtb).ok_or("bad FDT magic or header")?;
    if dtb.len() < total || dtb.len() < FDT_HEADER_BYTES {
        return Err("the blob is shorter than its header's totalsize");
    }
    let field = |index: usize| -> Result<usize, &'static str> {
        be32(dtb, index * 4)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or("truncated FDT header")
    };
    // Version 17 added size_dt_struct, which the reader needs.
    if field(5)? < 17 {
        return Err("FDT version older than 17");
    }
    let h = Header {
        total,
        off_struct: field(2)?,
        off_strings: field(3)?,
        off_rsvmap: field(4)?,
        size_strings: field(8)?,
        size_struct: field(9)?,
    };
    let fits = |off: usize, len: usize| off.checked_add(len).is_some_and(|end| end <= total);
    if !fits(h.off_struct, h.size_struct)
        || !fits(h.off_strings, h.size_strings)
        || !fits(h.off_rsvmap, 16)
    {
        return Err("FDT header offsets point outside the blob");
    }
    Ok(h)
}

/// A device tree blob whose header and structure block have been checked.
#[derive(Clone, Copy)]
struct Dtb<'a> {
    /// The blob, cut to `totalsize`.
    blob: &'a [u8],
    tree: Tree<'a>,
}

/// The structure and strings blocks: all a [`Node`] needs to read itself.
#[derive(Clone, Copy)]
struct Tree<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

/// A node: its name and where its properties start in the structure block.
#[derive(Clone, Copy)]
struct Node<'a> {
    tree: Tree<'a>,
    /// The unit name ("" for the root, which [`Lineage`] writes as "/").
    name: &'a str,
    /// Offset of the first token after the node's FDT_BEGIN_NODE and name.
    body: usize,
}

/// One property of a node.
#[derive(Clone, Copy)]
struct Property<'a> {
    name: &'a str,
    value: &'a [u8],
}

/// A token of the structure block, decoded. Offsets are into the structure block.
enum Token<'a> {
    /// A node begins; `body` is where its properties start.
    Begin {
        name: &'a str,
        body: usize,
    },
    End,
    Prop {
        property: Property<'a>,
        next: usize,
    },
    Nop,
    Finish,
}

impl<'a> Dtb<'a> {
    /// Checks the header and walks every token once: nesting balanced and at most
    /// [`MAX_DEPTH`] deep, names NUL-terminated UTF-8, property values and name offsets inside
    /// their blocks, properties before subnodes, exactly one root, then FDT_END.
    fn new(dtb: &'a [u8]) -> Result<Self, &'static str> {
        let h = header(dtb)?;
        let blob = dtb.get(..h.total).ok_or("truncated blob")?;
        let block = |off: usize, len: usize| blob.get(off..off.checked_add(len)?);
        let tree = Tree {
            structs: block(h.off_struct, h.size_struct)
                .ok_or("structure block outside the blob")?,
            strings: block(h.off_strings, h.size_strings)
                .ok_or("strings block outside the blob")?,
        };
        let mut pos = 0;
        let mut depth = 0usize;
        let mut seen_root = false;
        let mut props_allowed = false;
        loop {
            let (token, next) = tree.token(pos)?;
            match token {
                Token::Begin { name, body } => {
                    if (depth == 0) != name.is_empty() || (depth == 0 && seen_root) {
                        return Err("a second root node, or a nameless subnode");
                    }
                    if name.contains('/') {
                        return Err("a node name contains '/'");
                    }
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err("nodes nested too deeply");
                    }
                    seen_root = true;
                    props_allowed = true;
                    pos = body;
                }
                Token::End => {
                    depth = depth.checked_sub(1).ok_or("unbalanced FDT_END_NODE")?;
                    props_allowed = false;
                    pos = next;
                }
                Token::Prop { next: after, .. } => {
                    if !props_allowed {
                        return Err("a property outside a node or after a subnode");
                    }
                    pos = after;
                }
                Token::Nop => pos = next,
                Token::Finish if depth == 0 && seen_root => return Ok(Self { blob, tree }),
                Token::Finish => return Err("FDT_END inside a node or before the root"),
            }
        }
    }

    /// The root node (the first node of the structure block).
    fn root(&self) -> Option<Node<'a>> {
        let mut pos = 0;
        loop {
            match self.tree.token(pos).ok()? {
                (Token::Nop, next) => pos = next,
                (Token::Begin { name, body }, _) => {
                    return Some(Node {
                        tree: self.tree,
                        name,
                        body,
                    });
                }
                _ => return None,
            }
        }
    }
}

impl<'a> Tree<'a> {
    /// Decodes the token at `pos`; the second value is the offset just past its tag.
    fn token(&self, pos: usize) -> Result<(Token<'a>, usize), &'static str> {
        let tag = be32(self.structs, pos).ok_or("the structure block ends without FDT_END")?;
        let next = pos + 4;
        let token = match tag {
            FDT_BEGIN_NODE => {
                let rest = self.structs.get(next..).ok_or("truncated node name")?;
                let len = rest
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or("unterminated node name")?;
                let name = rest
                    .get(..len)
                    .and_then(|n| core::str::from_utf8(n).ok())
                    .ok_or("a node name is not UTF-8")?;
                let body = align4(len + 1)
                    .and_then(|n| next.checked_add(n))
                    .ok_or("node name too long")?;
                Token::Begin { name, body }
            }
            FDT_END_NODE => Token::End,
            FDT_PROP => {
                let len = be32(self.structs, next).ok_or("truncated property")? as usize;
                let name_off = be32(self.structs, next + 4).ok_or("truncated property")? as usize;
                let start = next + 8;
                let value = start
                    .checked_add(len)
                    .and_then(|end| self.structs.get(start..end))
                    .ok_or("a property value runs past the structure block")?;
                let name = self.string(name_off).ok_or("bad property name offset")?;
                let after = align4(len)
                    .and_then(|n| start.checked_add(n))
                    .ok_or("property too long")?;
                Token::Prop {
                    property: Property { name, value },
                    next: after,
                }
            }
            FDT_NOP => Token::Nop,
            FDT_END => Token::Finish,
            _ => return Err("unknown token in the structure block"),
        };
        Ok((token, next))
    }

    /// The NUL-terminated UTF-8 string at `offset` in the strings block.
    fn string(&self, offset: usize) -> Option<&'a str> {
        let rest = self.strings.get(offset..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        core::str::from_utf8(rest.get(..len)?).ok()
    }
}

impl<'a> Node<'a> {
    fn properties(self) -> impl Iterator<Item = Property<'a>> {
        let mut pos = Some(self.body);
        core::iter::from_fn(move || {
            loop {
                match self.tree.token(pos?).ok() {
                    Some((Token::Nop, next)) => pos = Some(next),
                    Some((Token::Prop { property, next }, _)) => {
                        pos = Some(next);
                        return Some(property);
                    }
                    _ => {
                        pos = None;
                        return None;
                    }
                }
            }
        })
    }

    fn property(self, name: &str) -> Option<Property<'a>> {
        self.properties().find(|p| p.name == name)
    }

    /// Offset of the first token after the node's properties.
    fn end_of_properties(self) -> Option<usize> {
        let mut pos = self.body;
        loop {
            match self.tree.token(pos).ok()? {
                (Token::Nop, next) => pos = next,
                (Token::Prop { next, .. }, _) => pos = next,
                _ => return Some(pos),
            }
        }
    }

    /// Offset just past the FDT_END_NODE that closes the node whose body starts at `body`.
    fn skip_subtree(tree: &Tree<'a>, body: usize) -> Option<usize> {
        let mut pos = body;
        let mut depth = 1usize;
        loop {
            match tree.token(pos).ok()? {
                (Token::Begin { body, .. }, _) => {
                    depth += 1;
                    pos = body;
                }
                (Token::End, next) => {
                    depth -= 1;
                    pos = next;
                    if depth == 0 {
                        return Some(pos);
                    }
                }
                (Token::Prop { next, .. }, _) => pos = next,
                (Token::Nop, next) => pos = next,
                (Token::Finish, _) => return None,
            }
        }
    }

    fn children(self) -> impl Iterator<Item = Node<'a>> {
        let mut pos = self.end_of_properties();
        core::iter::from_fn(move || {
            loop {
                match self.tree.token(pos?).ok() {
                    Some((Token::Nop, next)) => pos = Some(next),
                    Some((Token::Begin { name, body }, _)) => {
                        pos = Self::skip_subtree(&self.tree, body);
                        return Some(Node {
                            tree: self.tree,
                            name,
                            body,
                        });
                    }
                    _ => {
                        pos = None;
                        return None;
                    }
                }
            }
        })
    }
}

/// The /memreserve/ entries of the memory reservation block (zero-sized ones dropped).
fn memreserve(blob: &[u8]) -> Result<Vec<PhysRange>, &'static str> {
    let h = header(blob)?;
    let mut out = Vec::new();
    let mut off = h.off_rsvmap;
    loop {
        let (Some(address), Some(size)) = (be64(blob, off), be64(blob, off + 8)) else {
            return Err("no terminating entry");
        };
        if off + 16 > h.total {
            return Err("no terminating entry");
        }
        if address == 0 && size == 0 {
            return Ok(out);
        }
        if size != 0 {
            out.push(PhysRange::new(PhysAddr(address), size));
        }
        off += 16;
    }
}

// ---------------------------------------------------------------------------------------------
// Navigation: a node together with its ancestors
// ---------------------------------------------------------------------------------------------

/// A node and all its ancestors, root first. Nodes do not know their parent,
/// and `ranges` translation and inherited `interrupt-parent` need the whole chain.
#[derive(Clone, Copy)]
struct Lineage<'a> {
    root: Node<'a>,
    /// Levels 1.. (level 0 is `root`); `descendants[..len]` are all `Some`.
    descendants: [Option<Node<'a>>; MAX_DEPTH],
    len: usize,
}

impl<'a> Lineage<'a> {
    fn root(dtb: &Dtb<'a>) -> Option<Self> {
        let root = dtb.root()?;
        Some(Self {
            root,
            descendants: [None; MAX_DEPTH],
            len: 0,
        })
    }

    /// Index of the last level (0 for the root).
    fn last(&self) -> usize {
        self.len
    }

    fn level(&self, level: usize) -> Node<'a> {
        match level.checked_sub(1) {
            Some(i) if i < self.len => self.descendants.get(i).copied().flatten(),
            _ => None,
        }
        .unwrap_or(self.root)
    }

    fn node(&self) -> Node<'a> {
        self.level(self.last())
    }

    fn push(&mut self, child: Node<'a>) -> bool {
        match self.descendants.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(child);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    fn write_path(&self, upto: usize, out: &mut impl fmt::Write) -> fmt::Result {
        if upto == 0 {
            return out.write_str("/");
        }
        for level in 1..=upto.min(self.len) {
            out.write_str("/")?;
            out.write_str(self.level(level).name)?;
        }
        Ok(())
    }

    fn path_to(&self, level: usize) -> String {
        let mut path = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_path(level, &mut path);
        path
    }

    fn path(&self) -> String {
        self.path_to(self.last())
    }

    fn error(&self, fault: Fault) -> PlatformError {
        PlatformError::new(&self.path_to(fault.level), fault.property, fault.problem)
    }
}

/// A problem found by the allocation-free helpers: which level of a [`Lineage`] it concerns.
#[derive(Clone, Copy, Debug)]
struct Fault {
    level: usize,
    property: &'static str,
    problem: &'static str,
}

/// Descends from `lin` along the `/`-separated `path`. A component without a unit address
/// matches a node by its name alone (`/memory` finds `memory@40000000`).
fn descend<'a>(lin: &mut Lineage<'a>, path: &str) -> bool {
    for component in path.split('/').filter(|c| !c.is_empty()) {
        let with_unit = component.contains('@');
        let found = lin.node().children().find(|child| {
            child.name == component
                || (!with_unit && child.name.split('@').next() == Some(component))
        });
        match found {
            Some(child) if lin.push(child) => {}
            _ => return false,
        }
    }
    true
}

/// The node at an absolute path.
fn lookup<'a>(dt: &Dtb<'a>, path: &str) -> Option<Lineage<'a>> {
    if !path.starts_with('/') {
        return None;
    }
    let mut lin = Lineage::root(dt)?;
    descend(&mut lin, path).then_some(lin)
}

/// A path as used by `stdout-path`: absolute, or an alias optionally followed by `/more`.
/// Aliases are looked up once (an alias naming another alias is not followed).
fn resolve_path<'a>(dt: &Dtb<'a>, path: &str) -> Option<Lineage<'a>> {
    if path.starts_with('/') {
        return lookup(dt, path);
    }
    let (alias, rest) = path.split_once('/').unwrap_or((path, ""));
    let aliases = lookup(dt, "/aliases")?;
    let target = str_prop(aliases.node(), alias).ok()??;
    let mut lin = lookup(dt, target)?;
    descend(&mut lin, rest).then_some(lin)
}

/// Depth-first visit of the subtree at `lin` (the node itself first).
fn visit<'a, B>(
    lin: &mut Lineage<'a>,
    f: &mut dyn FnMut(&Lineage<'a>) -> ControlFlow<B>,
) -> ControlFlow<B> {
    f(lin)?;
    for child in lin.node().children() {
        if !lin.push(child) {
            continue;
        }
        let flow = visit(lin, f);
        lin.pop();
        flow?;
    }
    ControlFlow::Continue(())
}

/// The first enabled node in the tree for which `pred` holds.
fn find_first<'a>(root: &Lineage<'a>, pred: &dyn Fn(Node<'a>) -> bool) -> Option<Lineage<'a>> {
    let mut lin = *root;
    match visit(&mut lin, &mut |l| {
        if is_enabled(l.node()) && pred(l.node()) {
            ControlFlow::Break(*l)
        } else {
            ControlFlow::Continue(())
        }
    }) {
        ControlFlow::Break(found) => Some(found),
        ControlFlow::Continue(()) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Property decoding (all bounds-checked)
// ---------------------------------------------------------------------------------------------

fn prop<'a>(node: Node<'a>, name: &str) -> Option<&'a [u8]> {
    node.property(name).map(|p| p.value)
}

/// A property holding one NUL-terminated UTF-8 string.
fn as_string(value: &[u8]) -> Option<&str> {
    let (&last, text) = value.split_last()?;
    if last != 0 || text.contains(&0) {
        return None;
    }
    core::str::from_utf8(text).ok()
}

fn str_prop<'a>(node: Node<'a>, name: &str) -> Result<Option<&'a str>, &'static str> {
    match prop(node, name) {
        None => Ok(None),
        Some(value) => as_string(value)
            .map(Some)
            .ok_or("not a NUL-terminated UTF-8 string"),
    }
}

/// The entries of a string-list property (empty when malformed).
fn string_list(value: &[u8]) -> impl Iterator<Item = &str> {
    let body = match value.split_last() {
        Some((0, body)) => body,
        _ => &[],
    };
    body.split(|&b| b == 0)
        .filter(move |_| !body.is_empty())
        .filter_map(|s| core::str::from_utf8(s).ok())
}

fn compatible_with(node: Node<'_>, any_of: &[&str]) -> bool {
    prop(node, "compatible").is_some_and(|v| string_list(v).any(|c| any_of.contains(&c)))
}

/// `status` absent, "okay" or "ok" (Devicetree Specification v0.4, 2.3.4).
fn is_enabled(node: Node<'_>) -> bool {
    match prop(node, "status") {
        None => true,
        Some(value) => matches!(as_string(value), Some("okay" | "ok")),
    }
}

fn u32_prop(node: Node<'_>, name: &str) -> Result<Option<u32>, &'static str> {
    match prop(node, name) {
        None => Ok(None),
        Some(value) if value.len() == 4 => Ok(be32(value, 0)),
        Some(_) => Err("must be exactly one 32-bit cell"),
    }
}

/// `count` cells starting at cell `first`, as one number; `None` when out of bounds or wider
/// than 64 bits (leading zero cells are fine, so a 3-cell value with a zero top cell reads).
fn cells_value(value: &[u8], first: usize, count: usize) -> Option<u64> {
    let mut acc: u64 = 0;
    for i in 0..count {
        let cell = be32(value, first.checked_add(i)?.checked_mul(4)?)?;
        if acc >> 32 != 0 {
            return None;
        }
        acc = (acc << 32) | u64::from(cell);
    }
    Some(acc)
}

/// `#address-cells` or `#size-cells` of the node at `level` (the cells its children use).
fn cells_of(lin: &Lineage<'_>, level: usize, name: &'static str) -> Result<usize, Fault> {
    // Devicetree Specification v0.4, 2.3.5: absent means 2 address cells and 1 size cell.
    let default = if name == "#address-cells" { 2 } else { 1 };
    match u32_prop(lin.level(level), name) {
        Ok(None) => Ok(default),
        Ok(Some(n)) if n <= 4 => Ok(n as usize),
        Ok(Some(_)) => Err(Fault {
            level,
            property: name,
            problem: "more than 4 cells",
        }),
        Err(problem) => Err(Fault {
            level,
            property: name,
            problem,
        }),
    }
}

/// Translates `addr` (an address on the bus of the node at `bus`, i.e. in the address space of
/// its children) into a CPU physical address through the `ranges` of `bus` and every ancestor.
fn translate(lin: &Lineage<'_>, bus: usize, addr: u64, size: u64) -> Result<u64, Fault> {
    let mut bus = bus;
    let mut addr = addr;
    while bus > 0 {
        let fault = |problem| Fault {
            level: bus,
            property: "ranges",
            problem,
        };
        let ranges = prop(lin.level(bus), "ranges").ok_or(fault(
            "missing, so addresses below this node cannot be translated",
        ))?;
        if !ranges.is_empty() {
            let child_cells = cells_of(lin, bus, "#address-cells")?;
            let size_cells = cells_of(lin, bus, "#size-cells")?;
            let parent_cells = cells_of(lin, bus - 1, "#address-cells")?;
            let entry_cells = child_cells + parent_cells + size_cells;
            if entry_cells == 0 || !ranges.len().is_multiple_of(entry_cells * 4) {
                return Err(fault("length is not a whole number of entries"));
            }
            let mut translated = None;
            for entry in 0..ranges.len() / (entry_cells * 4) {
                let first = entry * entry_cells;
                let (Some(child), Some(parent), Some(len)) = (
                    cells_value(ranges, first, child_cells),
                    cells_value(ranges, first + child_cells, parent_cells),
                    cells_value(ranges, first + child_cells + parent_cells, size_cells),
                ) else {
                    // An entry we cannot represent (e.g. PCI space codes) maps nothing we use.
                    continue;
                };
                let Some(offset) = addr.checked_sub(child) else {
                    continue;
                };
                if offset < len && size <= len - offset {
                    translated = parent.checked_add(offset);
                    break;
                }
            }
            addr = translated.ok_or(fault("no entry covers the address of a node below"))?;
        }
        bus -= 1;
    }
    Ok(addr)
}

/// The node's `reg` value, its number of entries and the parent's address and size cells.
type RegLayout<'a> = (&'a [u8], usize, usize, usize);

fn reg_layout<'a>(lin: &Lineage<'a>) -> Result<Option<RegLayout<'a>>, Fault> {
    let level = lin.last();
    let Some(value) = prop(lin.node(), "reg") else {
        return Ok(None);
    };
    let Some(bus) = level.checked_sub(1) else {
        return Err(Fault {
            level,
            property: "reg",
            problem: "the root node cannot have reg",
        });
    };
    let address_cells = cells_of(lin, bus, "#address-cells")?;
    let size_cells = cells_of(lin, bus, "#size-cells")?;
    let entry_bytes = (address_cells + size_cells) * 4;
    if address_cells == 0 || !value.len().is_multiple_of(entry_bytes) {
        return Err(Fault {
            level,
            property: "reg",
            problem: "length is not a whole number of (address, size) entries",
        });
    }
    Ok(Some((
        value,
        value.len() / entry_bytes,
        address_cells,
        size_cells,
    )))
}

/// Entry `index` of the node's `reg` as a translated (CPU physical base, size) pair; `None` when
/// the node has no `reg` or fewer entries.
fn reg(lin: &Lineage<'_>, index: usize) -> Result<Option<(u64, u64)>, Fault> {
    let Some((value, count, address_cells, size_cells)) = reg_layout(lin)? else {
        return Ok(None);
    };
    if index >= count {
        return Ok(None);
    }
    let fault = |problem| Fault {
        level: lin.last(),
        property: "reg",
        problem,
    };
    let first = index * (address_cells + size_cells);
    let addr =
        cells_value(value, first, address_cells).ok_or(fault("address wider than 64 bits"))?;
    let size = cells_value(value, first + address_cells, size_cells)
        .ok_or(fault("size wider than 64 bits"))?;
    if addr.checked_add(size).is_none() {
        return Err(fault("range runs past the top of the address space"));
    }
    let base = translate(lin, lin.last() - 1, addr, size)?;
    Ok(Some((base, size)))
}

fn reg_count(lin: &Lineage<'_>) -> Result<usize, Fault> {
    Ok(reg_layout(lin)?.map_or(0, |(_, count, _, _)| count))
}

/// Decodes entry `index` of a 3-cell GIC interrupt specifier list (GIC DT binding:
/// type 0 = SPI n -> INTID 32 + n, type 1 = PPI n -> INTID 16 + n).
fn gic_intid(spec: &[u8], index: usize) -> Result<Option<u32>, &'static str> {
    if !spec.len().is_multiple_of(12) {
        return Err("length is not a whole number of 3-cell specifiers");
    }
    let (Some(kind), Some(number)) = (be32(spec, index * 12), be32(spec, index * 12 + 4)) else {
        return Ok(None);
    };
    match kind {
        0 if number < 988 => Ok(Some(32 + number)),
        1 if number < 16 => Ok(Some(16 + number)),
        0 | 1 => Err("interrupt number out of range"),
        _ => Err("unsupported interrupt type (only SPI and PPI)"),
    }
}

/// The GIC node, as found by [`parse_gic`], for interrupt-parent checks.
struct GicNode<'a> {
    phandle: Option<u32>,
    lineage: Lineage<'a>,
}

impl GicNode<'_> {
    /// True when interrupts of the node at `lin` go to this GIC: the nearest `interrupt-parent`
    /// (on the node or an ancestor) is the GIC's phandle, or, without one, the tree parent is
    /// the GIC itself.
    fn is_parent_of(&self, lin: &Lineage<'_>) -> bool {
        for level in (0..=lin.last()).rev() {
            if let Ok(Some(phandle)) = u32_prop(lin.level(level), "interrupt-parent") {
                return self.phandle == Some(phandle);
            }
        }
        lin.last() >= 1
            && lin.last() - 1 == self.lineage.last()
            && lin.level(lin.last() - 1).name == self.lineage.node().name
    }
}

// ---------------------------------------------------------------------------------------------
// The pieces of the platform
// ---------------------------------------------------------------------------------------------

fn parse_memory(root: &Lineage<'_>) -> Result<Vec<PhysRange>, PlatformError> {
    let mut ram = Vec::new();
    let mut lin = *root;
    let flow = visit(&mut lin, &mut |l| {
        let node = l.node();
        if !is_enabled(node) || prop(node, "device_type").and_then(as_string) != Some("memory") {
            return ControlFlow::Continue(());
        }
        let count = match reg_count(l) {
            Ok(count) => count,
            Err(fault) => return ControlFlow::Break(l.error(fault)),
        };
        for index in 0..count {
            match reg(l, index) {
                Ok(Some((base, size))) if size > 0 => {
                    ram.push(PhysRange::new(PhysAddr(base), size));
                }
                Ok(_) => {}
                Err(fault) => return ControlFlow::Break(l.error(fault)),
            }
        }
        ControlFlow::Continue(())
    });
    if let ControlFlow::Break(error) = flow {
        return Err(error);
    }
    if ram.is_empty() {
        return Err(PlatformError::new(
            "/memory",
            "reg",
            "no device_type = \"memory\" node with a non-empty reg",
        ));
    }
    ram.sort_by_key(|r| r.base);
    Ok(ram)
}

fn parse_reserved_memory(dt: &Dtb<'_>, out: &mut Vec<PhysRange>) -> Result<(), PlatformError> {
    let Some(mut lin) = lookup(dt, "/reserved-memory") else {
        return Ok(());
    };
    for child in lin.node().children() {
        if !is_enabled(child) || !lin.push(child) {
            continue;
        }
        let result = (|| {
            for index in 0..reg_count(&lin)? {
                if let Some((base, size)) = reg(&lin, index)?
                    && size > 0
                {
                    out.push(PhysRange::new(PhysAddr(base), size));
                }
            }
            Ok(())
        })();
        let error = result.map_err(|fault| lin.error(fault));
        lin.pop();
        error?;
    }
    Ok(())
}

/// MPIDR_EL1 affinity fields: Aff3 (39:32) and Aff2..Aff0 (23:0).
const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

fn parse_cpus(dt: &Dtb<'_>) -> Result<Vec<Cpu>, PlatformError> {
    let mut lin = lookup(dt, "/cpus").ok_or_else(|| PlatformError::new("/cpus", "", "missing"))?;
    let address_cells = cells_of(&lin, lin.last(), "#address-cells").map_err(|f| lin.error(f))?;
    if !(1..=2).contains(&address_cells) {
        return Err(PlatformError::new(
            "/cpus",
            "#address-cells",
            "must be 1 or 2",
        ));
    }
    let mut cpus: Vec<Cpu> = Vec::new();
    for child in lin.node().children() {
        if child.name.split('@').next() != Some("cpu")
            || prop(child, "device_type").and_then(as_string) != Some("cpu")
            || !lin.push(child)
        {
            continue;
        }
        let cpu = parse_cpu(&lin, child, address_cells);
        let path = lin.path();
        lin.pop();
        let cpu = cpu?;
        if cpus.iter().any(|c| c.mpidr == cpu.mpidr) {
            return Err(PlatformError::new(
                &path,
                "reg",
                format!("MPIDR {:#x} is listed twice", cpu.mpidr),
            ));
        }
        cpus.push(cpu);
    }
    if cpus.is_empty() {
        return Err(PlatformError::new(
            "/cpus",
            "",
            "no cpu node with device_type \"cpu\"",
        ));
    }
    Ok(cpus)
}

fn parse_cpu(
    lin: &Lineage<'_>,
    node: Node<'_>,
    address_cells: usize,
) -> Result<Cpu, PlatformError> {
    let path = lin.path();
    let value = prop(node, "reg").ok_or_else(|| PlatformError::new(&path, "reg", "missing"))?;
    if value.len() < address_cells * 4 {
        return Err(PlatformError::new(
            &path,
            "reg",
            "shorter than #address-cells of /cpus",
        ));
    }
    let mpidr = cells_value(value, 0, address_cells)
        .ok_or_else(|| PlatformError::new(&path, "reg", "malformed"))?;
    if mpidr & !MPIDR_AFFINITY_MASK != 0 {
        return Err(PlatformError::new(
            &path,
            "reg",
            format!("{mpidr:#x} is not an MPIDR affinity value"),
        ));
    }
    let method = prop(node, "enable-method")
        .ok_or_else(|| PlatformError::new(&path, "enable-method", "missing"))?;
    let enable_method = match string_list(method).next() {
        Some("psci") => EnableMethod::Psci,
        Some("spin-table") => {
            let release = prop(node, "cpu-release-addr")
                .ok_or_else(|| PlatformError::new(&path, "cpu-release-addr", "missing"))?;
            if release.len() != 8 {
                return Err(PlatformError::new(
                    &path,
                    "cpu-release-addr",
                    "must be one 64-bit value (two cells)",
                ));
            }
            let addr = be64(release, 0)
                .ok_or_else(|| PlatformError::new(&path, "cpu-release-addr", "malformed"))?;
            EnableMethod::SpinTable {
                release_addr: PhysAddr(addr),
            }
        }
        Some(other) => {
            return Err(PlatformError::new(
                &path,
                "enable-method",
                format!("\"{other}\" is not supported (only \"psci\" and \"spin-table\")"),
            ));
        }
        None => return Err(PlatformError::new(&path, "enable-method", "not a string")),
    };
    Ok(Cpu {
        mpidr,
        enable_method,
    })
}

const GICV3_COMPATIBLE: &[&str] = &["arm,gic-v3"];
const GICV2_COMPATIBLE: &[&str] = &[
    "arm,cortex-a15-gic",
    "arm,gic-400",
    "arm,cortex-a7-gic",
    "arm,arm-gic",
];

fn parse_gic<'a>(root: &Lineage<'a>) -> Result<(Gic, GicNode<'a>), PlatformError> {
    let lin = find_first(root, &|n| {
        n.property("interrupt-controller").is_some()
            && (compatible_with(n, GICV3_COMPATIBLE) || compatible_with(n, GICV2_COMPATIBLE))
    })
    .ok_or_else(|| {
        PlatformError::new(
            "/",
            "compatible",
            "no interrupt controller compatible with \"arm,gic-v3\", \"arm,gic-400\", \
             \"arm,cortex-a15-gic\", \"arm,cortex-a7-gic\" or \"arm,arm-gic\"",
        )
    })?;
    let node = lin.node();
    let path = lin.path();
    let version = if compatible_with(node, GICV3_COMPATIBLE) {
        GicVersion::V3
    } else {
        GicVersion::V2
    };
    match u32_prop(node, "#interrupt-cells") {
        Ok(Some(3)) => {}
        _ => {
            return Err(PlatformError::new(&path, "#interrupt-cells", "must be 3"));
        }
    }
    let range = |index: usize| -> Result<Option<PhysRange>, PlatformError> {
        Ok(reg(&lin, index)
            .map_err(|f| lin.error(f))?
            .map(|(base, size)| PhysRange::new(PhysAddr(base), size)))
    };
    let count = reg_count(&lin).map_err(|f| lin.error(f))?;
    let gicd = range(0)?.ok_or_else(|| PlatformError::new(&path, "reg", "missing"))?;
    let mut gic = Gic {
        version,
        gicd,
        gicr: Vec::new(),
        gicc: None,
        gich: None,
        gicv: None,
        maintenance_intid: None,
    };
    let mut next = 1;
    if version == GicVersion::V3 {
        let regions = match u32_prop(node, "#redistributor-regions") {
            Ok(None) => 1,
            Ok(Some(n)) if n >= 1 => n as usize,
            _ => {
                return Err(PlatformError::new(
                    &path,
                    "#redistributor-regions",
                    "must be one cell, at least 1",
                ));
            }
        };
        if count < 1 + regions {
            return Err(PlatformError::new(
                &path,
                "reg",
                format!("needs GICD and {regions} redistributor region(s), has {count} entries"),
            ));
        }
        for index in 1..=regions {
            gic.gicr.extend(range(index)?);
        }
        next = 1 + regions;
    } else if count < 4 {
        return Err(PlatformError::new(
            &path,
            "reg",
            format!(
                "has {count} entries; a GICv2 needs GICD, GICC, GICH and GICV \
                 (the virtualization extensions)"
            ),
        ));
    }
    // GICv2, and optionally GICv3 with legacy support: GICC, GICH, GICV follow.
    gic.gicc = range(next)?;
    gic.gich = range(next + 1)?;
    gic.gicv = range(next + 2)?;
    if let Some(spec) = prop(node, "interrupts") {
        gic.maintenance_intid = gic_intid(spec, 0)
            .map_err(|problem| PlatformError::new(&path, "interrupts", problem))?;
    }
    let phandle = u32_prop(node, "phandle")
        .ok()
        .flatten()
        .or_else(|| u32_prop(node, "linux,phandle").ok().flatten());
    Ok((
        gic,
        GicNode {
            phandle,
            lineage: lin,
        },
    ))
}

fn parse_timer(root: &Lineage<'_>, gic: &GicNode<'_>) -> Result<Timer, PlatformError> {
    let lin = find_first(root, &|n| compatible_with(n, &["arm,armv8-timer"])).ok_or_else(|| {
        PlatformError::new(
            "/",
            "compatible",
            "no node compatible with \"arm,armv8-timer\"",
        )
    })?;
    let path = lin.path();
    let spec = prop(lin.node(), "interrupts")
        .ok_or_else(|| PlatformError::new(&path, "interrupts", "missing"))?;
    if !gic.is_parent_of(&lin) {
        return Err(PlatformError::new(
            &path,
            "interrupts",
            "not routed to the GIC",
        ));
    }
    let ppi = |index: usize| -> Result<Option<u32>, PlatformError> {
        let intid =
            gic_intid(spec, index).map_err(|p| PlatformError::new(&path, "interrupts", p))?;
        match intid {
            Some(id) if !(16..32).contains(&id) => Err(PlatformError::new(
                &path,
                "interrupts",
                "timer interrupts must be PPIs",
            )),
            other => Ok(other),
        }
    };
    let required = |index: usize| -> Result<u32, PlatformError> {
        ppi(index)?.ok_or_else(|| {
            PlatformError::new(
                &path,
                "interrupts",
                "needs secure-phys, phys, virt and hyp-phys interrupts",
            )
        })
    };
    Ok(Timer {
        secure_phys_intid: required(0)?,
        phys_intid: required(1)?,
        virt_intid: required(2)?,
        hyp_phys_intid: required(3)?,
        hyp_virt_intid: ppi(4)?,
    })
}

fn is_pl011(node: Node<'_>) -> bool {
    compatible_with(node, &["arm,pl011"])
}

/// The console node: /chosen `stdout-path` (or `linux,stdout-path`), options after ':'
/// stripped, aliases resolved. When it names something other than a PL011, the enabled PL011
/// with the lowest `serialN` alias is used instead. Errors are (property, problem).
fn console_node<'a>(dt: &Dtb<'a>) -> Result<Lineage<'a>, (&'static str, &'static str)> {
    const STDOUT: &str = "stdout-path";
    let chosen = lookup(dt, "/chosen").ok_or((STDOUT, "missing (there is no /chosen node)"))?;
    let (property, value) = ["stdout-path", "linux,stdout-path"]
        .into_iter()
        .find_map(|name| prop(chosen.node(), name).map(|v| (name, v)))
        .ok_or((STDOUT, "missing (and no linux,stdout-path)"))?;
    let spec = as_string(value).ok_or((property, "not a NUL-terminated UTF-8 string"))?;
    let path = spec.split(':').next().unwrap_or(spec);
    let node = resolve_path(dt, path).ok_or((property, "names no node (nor an alias of one)"))?;
    if is_pl011(node.node()) {
        return Ok(node);
    }
    let mut best: Option<(u32, Lineage<'a>)> = None;
    if let Some(aliases) = lookup(dt, "/aliases") {
        for alias in aliases.node().properties() {
            let Some(n) = alias
                .name
                .strip_prefix("serial")
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if best.as_ref().is_some_and(|(m, _)| *m <= n) {
                continue;
            }
            if let Some(target) = as_string(alias.value).and_then(|t| lookup(dt, t))
                && is_pl011(target.node())
                && is_enabled(target.node())
            {
                best = Some((n, target));
            }
        }
    }
    best.map(|(_, lin)| lin).ok_or((
        property,
        "names a UART that is not compatible with \"arm,pl011\", and no serialN alias names \
         an enabled PL011",
    ))
}

fn parse_uart(dt: &Dtb<'_>, gic: &GicNode<'_>) -> Result<Uart, PlatformError> {
    let lin = console_node(dt)
        .map_err(|(property, problem)| PlatformError::new("/chosen", property, problem))?;
    let path = lin.path();
    let (base, size) = reg(&lin, 0)
        .map_err(|f| lin.error(f))?
        .ok_or_else(|| PlatformError::new(&path, "reg", "missing"))?;
    let mut intid = None;
    if let Some(spec) = prop(lin.node(), "interrupts")
        && gic.is_parent_of(&lin)
    {
        intid = gic_intid(spec, 0).map_err(|p| PlatformError::new(&path, "interrupts", p))?;
    }
    Ok(Uart {
        path,
        base: PhysAddr(base),
        size_bytes: size,
        intid,
    })
}

fn parse_psci(dt: &Dtb<'_>) -> Result<Option<PsciConduit>, PlatformError> {
    let Some(lin) = lookup(dt, "/psci") else {
        return Ok(None);
    };
    let path = lin.path();
    match str_prop(lin.node(), "method") {
        Ok(Some("smc")) => Ok(Some(PsciConduit::Smc)),
        Ok(Some("hvc")) => Ok(Some(PsciConduit::Hvc)),
        Ok(Some(other)) => Err(PlatformError::new(
            &path,
            "method",
            format!("\"{other}\" is neither \"smc\" nor \"hvc\""),
        )),
        Ok(None) => Err(PlatformError::new(&path, "method", "missing")),
        Err(problem) => Err(PlatformError::new(&path, "method", problem)),
    }
}

// ---------------------------------------------------------------------------------------------
// VM nodes (/chosen children compatible with "elvisor,vm"; see docs/configuration.md)
// ---------------------------------------------------------------------------------------------

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 64;

/// What a VM node is checked against.
struct VmLimits<'r> {
    dt: &'r Dtb<'r>,
    gic: &'r GicNode<'r>,
    host_cpus: usize,
    ram: &'r [PhysRange],
    /// Ranges a module must not overlap, with a description for the error.
    forbidden: &'r [(PhysRange, &'static str)],
}

fn parse_vm(lin: &Lineage<'_>, limits: &VmLimits<'_>) -> Result<VmConfig, PlatformError> {
    let node = lin.node();
    let path = lin.path();
    let err = |property: &str, problem: String| PlatformError::new(&path, property, problem);

    let name = match str_prop(node, "elvisor,name") {
        Ok(Some(name)) if !name.is_empty() => name.to_string(),
        Ok(Some(_)) => return Err(err("elvisor,name", "empty".into())),
        Ok(None) => node.name.to_string(),
        Err(problem) => return Err(err("elvisor,name", problem.into())),
    };

    let vcpus = match u32_prop(node, "cpus") {
        Ok(Some(n)) if (1..=MAX_VCPUS).contains(&n) => n,
        Ok(Some(n)) => return Err(err("cpus", format!("{n} is not in 1..={MAX_VCPUS}"))),
        Ok(None) => return Err(err("cpus", "missing".into())),
        Err(problem) => return Err(err("cpus", problem.into())),
    };

    let mut cpu_affinity = Vec::new();
    if let Some(value) = prop(node, "elvisor,cpu-affinity") {
        if value.len() != vcpus as usize * 4 {
            return Err(err(
                "elvisor,cpu-affinity",
                format!("must list one host CPU index per vCPU ({vcpus})"),
            ));
        }
        for index in 0..vcpus as usize {
            let pcpu = be32(value, index * 4)
                .ok_or_else(|| err("elvisor,cpu-affinity", "malformed".into()))?;
            if pcpu as usize >= limits.host_cpus {
                return Err(err(
                    "elvisor,cpu-affinity",
                    format!(
                        "CPU {pcpu} does not exist (the host has {})",
                        limits.host_cpus
                    ),
                ));
            }
            cpu_affinity.push(pcpu);
        }
    }
    // Without an affinity list the kernel places the vCPUs on the least-loaded CPUs
    // (vm::placement); more vCPUs than CPUs simply share them.

    let memory_bytes = match prop(node, "memory") {
        None => return Err(err("memory", "missing".into())),
        Some(value) if value.len() == 8 => be64(value, 0).unwrap_or(0),
        Some(_) => {
            return Err(err(
                "memory",
                "must be one 64-bit byte count (two cells)".into(),
            ));
        }
    };
    if memory_bytes == 0 || !memory_bytes.is_multiple_of(BLOCK_2M) {
        return Err(err(
            "memory",
            format!("{memory_bytes:#x} bytes is not a nonzero multiple of 2 MiB"),
        ));
    }

    let bootargs = match str_prop(node, "bootargs") {
        Ok(args) => args.unwrap_or("").to_string(),
        Err(problem) => return Err(err("bootargs", problem.into())),
    };

    let (kernel, ramdisk) = parse_modules(lin, limits)?;
    let passthrough = parse_passthrough(lin, limits)?;
    let kernel = kernel.ok_or_else(|| {
        PlatformError::new(
            &path,
            "",
            "no kernel module (a child node compatible with \"multiboot,kernel\")",
        )
    })?;

    Ok(VmConfig {
        name,
        node_path: path.clone(),
        vcpus,
        cpu_affinity,
        memory_bytes,
        bootargs,
        kernel,
        ramdisk,
        passthrough,
    })
}

/// The passthrough subnodes of a VM node: each names a host device by path; its `reg`
/// windows (translated through the host's `ranges`) and its GIC SPIs go to the VM.
fn parse_passthrough(
    vm: &Lineage<'_>,
    limits: &VmLimits<'_>,
) -> Result<Vec<Passthrough>, PlatformError> {
    let vm_path = vm.path();
    let mut out = Vec::new();
    for child in vm.node().children() {
        if !compatible_with(child, &["elvisor,passthrough"]) || !is_enabled(child) {
            continue;
        }
        let path = format!("{vm_path}/{}", child.name);
        let err = |property: &str, problem: String| PlatformError::new(&path, property, problem);
        let host_path = match str_prop(child, "elvisor,host-path") {
            Ok(Some(p)) => p,
            Ok(None) => return Err(err("elvisor,host-path", "missing".into())),
            Err(problem) => return Err(err("elvisor,host-path", problem.into())),
        };
        let host = resolve_path(limits.dt, host_path)
            .ok_or_else(|| err("elvisor,host-path", format!("no node {host_path}")))?;
        if !is_enabled(host.node()) {
            return Err(err("elvisor,host-path", format!("{host_path} is disabled")));
        }
        let compatible = prop(host.node(), "compatible")
            .map(|v| string_list(v).map(String::from).collect())
            .unwrap_or_default();
        let count = reg_count(&host).map_err(|f| host.error(f))?;
        let mut regs = Vec::new();
        for i in 0..count {
            if let Some((base, size)) = reg(&host, i).map_err(|f| host.error(f))? {
                let r = PhysRange::new(PhysAddr(base), size);
                if size == 0 || limits.ram.iter().any(|m| m.overlaps(&r)) {
                    return Err(err(
                        "elvisor,host-path",
                        format!("{host_path} reg {r:?} is empty or RAM: only devices pass through"),
                    ));
                }
                regs.push(r);
            }
        }
        let mut irqs = Vec::new();
        if let Some(spec) = prop(host.node(), "interrupts") {
            if !limits.gic.is_parent_of(&host) {
                return Err(err(
                    "elvisor,host-path",
                    format!("{host_path}: its interrupts do not go to the GIC"),
                ));
            }
            for idx in 0..spec.len() / 12 {
                let intid = gic_intid(spec, idx).map_err(|p| {
                    err("elvisor,host-path", format!("{host_path} interrupts: {p}"))
                })?;
                let Some(intid) = intid else { continue };
                if intid < 32 {
                    return Err(err(
                        "elvisor,host-path",
                        format!("{host_path}: INTID {intid} is not an SPI; only SPIs pass through"),
                    ));
                }
                // Flags cell: 1/2 = edge, 4/8 = level.
                let level = be32(spec, idx * 12 + 8).is_some_and(|f| f & 0xc != 0);
                irqs.push((intid, level));
            }
        }
        out.push(Passthrough {
            node_path: path.clone(),
            host_path: host_path.into(),
            compatible,
            regs,
            irqs,
        });
    }
    Ok(out)
}

/// The kernel and ramdisk module subnodes of a VM node. Their `reg` is a host physical range in
/// the VM node's own `#address-cells`/`#size-cells` (default 2/2), not translated: /chosen is
/// not a bus.
fn parse_modules(
    vm: &Lineage<'_>,
    limits: &VmLimits<'_>,
) -> Result<(Option<PhysRange>, Option<PhysRange>), PlatformError> {
    let node = vm.node();
    let vm_path = vm.path();
    let cells = |name: &'static str| -> Result<usize, PlatformError> {
        match u32_prop(node, name) {
            Ok(None) => Ok(2),
            Ok(Some(n @ 1..=2)) => Ok(n as usize),
            Ok(Some(_)) => Err(PlatformError::new(&vm_path, name, "must be 1 or 2")),
            Err(problem) => Err(PlatformError::new(&vm_path, name, problem)),
        }
    };
    let address_cells = cells("#address-cells")?;
    let size_cells = cells("#size-cells")?;

    let mut kernel = None;
    let mut ramdisk = None;
    for child in node.children() {
        let is_kernel = compatible_with(child, &["multiboot,kernel"]);
        let is_ramdisk = compatible_with(child, &["multiboot,ramdisk"]);
        if !(is_kernel || is_ramdisk) || !is_enabled(child) {
            continue;
        }
        let path = format!("{vm_path}/{}", child.name);
        let err = |property: &str, problem: String| PlatformError::new(&path, property, problem);
        let value = prop(child, "reg").ok_or_else(|| err("reg", "missing".into()))?;
        if value.len() != (address_cells + size_cells) * 4 {
            return Err(err(
                "reg",
                "must be exactly one (address, size) pair in the VM node's cells".into(),
            ));
        }
        let base = cells_value(value, 0, address_cells);
        let size = cells_value(value, address_cells, size_cells);
        let (Some(base), Some(size)) = (base, size) else {
            return Err(err("reg", "malformed".into()));
        };
        if size == 0 || base.checked_add(size).is_none() {
            return Err(err("reg", "empty or wrapping range".into()));
        }
        let range = PhysRange::new(PhysAddr(base), size);
        if !limits
            .ram
            .iter()
            .any(|r| r.base <= range.base && range.end() <= r.end())
        {
            return Err(err("reg", format!("{range:?} is not inside RAM")));
        }
        if let Some((_, what)) = limits.forbidden.iter().find(|(r, _)| r.overlaps(&range)) {
            return Err(err("reg", format!("{range:?} overlaps {what}")));
        }
        let (slot, kind) = if is_kernel {
            (&mut kernel, "kernel")
        } else {
            (&mut ramdisk, "ramdisk")
        };
        if slot.is_some() {
            return Err(err(
                "compatible",
                format!("a second {kind} module; a VM takes exactly one"),
            ));
        }
        *slot = Some(range);
    }
    Ok((kernel, ramdisk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::{FdtWriter, FdtWriterResult};

    static GICV3: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-gicv3.dtb");
    static GICV2: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-gicv2.dtb");
    static GICV3_VM: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-gicv3-vm.dtb");
    static RPI4B: &[u8] = include_bytes!("../tests/fixtures/rpi4b.dtb");
    static RPI4B_QEMU: &[u8] = include_bytes!("../tests/fixtures/rpi4b-qemu.dtb");

    const DTB_PA: PhysAddr = PhysAddr(0x4800_0000);
    const IMAGE: PhysRange = PhysRange::new(PhysAddr(0x4008_0000), 0x20_0000);

    fn range(base: u64, size: u64) -> PhysRange {
        PhysRange::new(PhysAddr(base), size)
    }

    fn parse_ok(dtb: &[u8]) -> Platform {
        parse(dtb, DTB_PA, IMAGE).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(dtb: &[u8]) -> PlatformError {
        parse(dtb, DTB_PA, IMAGE).expect_err("the device tree should be rejected")
    }

    #[test]
    fn qemu_virt_gicv3() {
        let p = parse_ok(GICV3);
        assert_eq!(p.ram, [range(0x4000_0000, 0x4000_0000)]);
        assert_eq!(
            p.cpus,
            [
                Cpu {
                    mpidr: 0,
                    enable_method: EnableMethod::Psci
                },
                Cpu {
                    mpidr: 1,
                    enable_method: EnableMethod::Psci
                },
            ]
        );
        assert_eq!(p.gic.version, GicVersion::V3);
        assert_eq!(p.gic.gicd, range(0x0800_0000, 0x1_0000));
        assert_eq!(p.gic.gicr, [range(0x080a_0000, 0xf6_0000)]);
        assert_eq!((p.gic.gicc, p.gic.gich, p.gic.gicv), (None, None, None));
        assert_eq!(p.gic.maintenance_intid, Some(25));
        assert_eq!(
            p.timer,
            Timer {
                secure_phys_intid: 29,
                phys_intid: 30,
                virt_intid: 27,
                hyp_phys_intid: 26,
                hyp_virt_intid: Some(28),
            }
        );
        assert_eq!(p.uart.path, "/pl011@9000000");
        assert_eq!(p.uart.base, PhysAddr(0x0900_0000));
        assert_eq!(p.uart.size_bytes, 0x1000);
        assert_eq!(p.uart.intid, Some(33));
        assert_eq!(p.psci, Some(PsciConduit::Smc));
        assert_eq!(p.bootargs, "");
        assert!(p.vms.is_empty());
        // The dumped blob is QEMU's unpacked 1 MiB one.
        assert_eq!(p.reserved, [IMAGE, range(DTB_PA.0, 0x10_0000)]);
    }

    #[test]
    fn qemu_virt_gicv2() {
        let p = parse_ok(GICV2);
        assert_eq!(p.ram, [range(0x4000_0000, 0x4000_0000)]);
        assert_eq!(p.cpus.len(), 2);
        assert!(p.cpus.iter().all(|c| c.enable_method == EnableMethod::Psci));
        assert_eq!(p.gic.version, GicVersion::V2);
        assert_eq!(p.gic.gicd, range(0x0800_0000, 0x1_0000));
        assert!(p.gic.gicr.is_empty());
        assert_eq!(p.gic.gicc, Some(range(0x0801_0000, 0x1_0000)));
        assert_eq!(p.gic.gich, Some(range(0x0803_0000, 0x1_0000)));
        assert_eq!(p.gic.gicv, Some(range(0x0804_0000, 0x1_0000)));
        assert_eq!(p.gic.maintenance_intid, Some(25));
        // -cpu cortex-a72 has no VHE, so QEMU lists no EL2 virtual timer.
        assert_eq!(
            p.timer,
            Timer {
                secure_phys_intid: 29,
                phys_intid: 30,
                virt_intid: 27,
                hyp_phys_intid: 26,
                hyp_virt_intid: None,
            }
        );
        assert_eq!(p.uart.base, PhysAddr(0x0900_0000));
        assert_eq!(p.uart.intid, Some(33));
        assert_eq!(p.psci, Some(PsciConduit::Smc));
    }

    fn rpi4b_cpus() -> Vec<Cpu> {
        [0xd8, 0xe0, 0xe8, 0xf0]
            .iter()
            .enumerate()
            .map(|(i, &addr)| Cpu {
                mpidr: i as u64,
                enable_method: EnableMethod::SpinTable {
                    release_addr: PhysAddr(addr),
                },
            })
            .collect()
    }

    fn assert_rpi4b_devices(p: &Platform) {
        assert_eq!(p.cpus, rpi4b_cpus());
        assert_eq!(p.gic.version, GicVersion::V2);
        assert_eq!(p.gic.gicd, range(0xff84_1000, 0x1000));
        assert_eq!(p.gic.gicc, Some(range(0xff84_2000, 0x2000)));
        assert_eq!(p.gic.gich, Some(range(0xff84_4000, 0x2000)));
        assert_eq!(p.gic.gicv, Some(range(0xff84_6000, 0x2000)));
        assert_eq!(p.gic.maintenance_intid, Some(25));
        assert_eq!(
            p.timer,
            Timer {
                secure_phys_intid: 29,
                phys_intid: 30,
                virt_intid: 27,
                hyp_phys_intid: 26,
                hyp_virt_intid: None,
            }
        );
        // stdout-path is "serial1:115200n8", the mini-UART; serial0 is the PL011.
        assert_eq!(p.uart.path, "/soc/serial@7e201000");
        assert_eq!(p.uart.base, PhysAddr(0xfe20_1000));
        assert_eq!(p.uart.size_bytes, 0x200);
        assert_eq!(p.uart.intid, Some(32 + 0x79));
        assert_eq!(p.psci, None);
    }

    #[test]
    fn rpi4b_as_qemu_passes_it() {
        let p = parse_ok(RPI4B_QEMU);
        // QEMU fills in /memory@0 with the 960 MiB below the VideoCore carve-out.
        assert_eq!(p.ram, [range(0, 0x3c00_0000)]);
        assert_rpi4b_devices(&p);
        // /memreserve/ keeps the spin table page; nvram@0 is disabled, linux,cma has no reg.
        assert_eq!(
            p.reserved,
            [range(0, 0x1000), IMAGE, range(DTB_PA.0, 74772)]
        );
    }

    #[test]
    fn rpi4b_as_debian_ships_it() {
        // The firmware fills in memory@0; as shipped its reg is <0 0 0>.
        let e = parse_err(RPI4B);
        assert_eq!((e.node.as_str(), e.property.as_str()), ("/memory", "reg"));

        // Everything else parses; check the pieces one by one.
        let fdt = Dtb::new(RPI4B).unwrap();
        let blob = fdt.blob;
        let root = Lineage::root(&fdt).unwrap();
        let (gic, gic_node) = parse_gic(&root).unwrap();
        let p = Platform {
            ram: Vec::new(),
            reserved: memreserve(blob).unwrap(),
            cpus: parse_cpus(&fdt).unwrap(),
            timer: parse_timer(&root, &gic_node).unwrap(),
            uart: parse_uart(&fdt, &gic_node).unwrap(),
            gic,
            psci: parse_psci(&fdt).unwrap(),
            bootargs: String::new(),
            rng_seed: Vec::new(),
            vms: Vec::new(),
        };
        assert_rpi4b_devices(&p);
        assert_eq!(p.reserved, [range(0, 0x1000)]);
        assert_eq!(early_console(RPI4B), Some(PhysAddr(0xfe20_1000)));
    }

    #[test]
    fn vm_fixture() {
        let p = parse_ok(GICV3_VM);
        let kernel = range(0x6000_0000, 0x1_0000);
        assert_eq!(
            p.vms,
            [VmConfig {
                name: "vm-smoke".into(),
                node_path: "/chosen/vm-smoke".into(),
                vcpus: 1,
                cpu_affinity: Vec::new(),
                memory_bytes: 0x400_0000,
                bootargs: "hello".into(),
                kernel,
                ramdisk: None,
                passthrough: Vec::new(),
            }]
        );
        assert!(p.reserved.contains(&kernel));
        assert!(p.reserved.windows(2).all(|w| w[0].base <= w[1].base));
    }

    #[test]
    fn early_helpers() {
        assert_eq!(early_console(GICV3), Some(PhysAddr(0x0900_0000)));
        assert_eq!(early_console(GICV2), Some(PhysAddr(0x0900_0000)));
        assert_eq!(early_console(RPI4B_QEMU), Some(PhysAddr(0xfe20_1000)));
        assert_eq!(early_console(&[0u8; 64]), None);
        assert_eq!(early_console(&GICV3[..100]), None);
        assert_eq!(early_bootargs(GICV3), None);
        assert_eq!(early_psci(GICV3), parse_ok(GICV3).psci);
        assert!(early_psci(GICV3).is_some(), "QEMU virt's DTB has /psci");
        assert_eq!(early_psci(RPI4B), None, "the Pi 4 firmware has no PSCI");
        assert_eq!(early_psci(&[0u8; 64]), None);
        let dtb = host_dt(true, &|w| {
            w.property_string("bootargs", "console=hvc0 loglevel=8")?;
            w.property_string("stdout-path", "serial0:115200n8")
        });
        assert_eq!(early_bootargs(&dtb), Some("console=hvc0 loglevel=8"));
        assert_eq!(early_console(&dtb), Some(PhysAddr(0x0900_0000)));
        assert_eq!(parse_ok(&dtb).bootargs, "console=hvc0 loglevel=8");
    }

    #[test]
    fn total_size() {
        assert_eq!(fdt_total_size(GICV3), Some(0x10_0000));
        assert_eq!(fdt_total_size(&RPI4B_QEMU[..8]), Some(74772));
        assert_eq!(fdt_total_size(&RPI4B[..7]), None);
        assert_eq!(fdt_total_size(&[0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0, 8]), None);
        assert_eq!(fdt_total_size(&[0; 64]), None);
    }

    // --- Small trees built in the test -------------------------------------------------------

    type Build<'f> = &'f dyn Fn(&mut FdtWriter) -> FdtWriterResult<()>;

    /// A QEMU-virt-like host tree; `chosen` writes the /chosen properties and subnodes.
    fn host_dt(memory: bool, chosen: Build<'_>) -> Vec<u8> {
        host_dt_with(memory, &|_| Ok(()), chosen)
    }

    /// As [`host_dt`], with `extra` writing more nodes under the root.
    fn host_dt_with(memory: bool, extra: Build<'_>, chosen: Build<'_>) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let build = |w: &mut FdtWriter| -> FdtWriterResult<()> {
            let root = w.begin_node("")?;
            w.property_u32("#address-cells", 2)?;
            w.property_u32("#size-cells", 2)?;
            w.property_u32("interrupt-parent", 1)?;
            if memory {
                let n = w.begin_node("memory@40000000")?;
                w.property_string("device_type", "memory")?;
                w.property_array_u64("reg", &[0x4000_0000, 0x4000_0000])?;
                w.end_node(n)?;
            }
            let cpus = w.begin_node("cpus")?;
            w.property_u32("#address-cells", 1)?;
            w.property_u32("#size-cells", 0)?;
            for i in 0..2u32 {
                let n = w.begin_node(&format!("cpu@{i}"))?;
                w.property_string("device_type", "cpu")?;
                w.property_u32("reg", i)?;
                w.property_string("enable-method", "psci")?;
                w.end_node(n)?;
            }
            w.end_node(cpus)?;
            let n = w.begin_node("psci")?;
            w.property_string("method", "hvc")?;
            w.end_node(n)?;
            let n = w.begin_node("intc@8000000")?;
            w.property_string("compatible", "arm,gic-v3")?;
            w.property_null("interrupt-controller")?;
            w.property_u32("#interrupt-cells", 3)?;
            w.property_array_u64("reg", &[0x800_0000, 0x1_0000, 0x80a_0000, 0xf6_0000])?;
            w.property_u32("phandle", 1)?;
            w.end_node(n)?;
            let n = w.begin_node("timer")?;
            w.property_string("compatible", "arm,armv8-timer")?;
            w.property_array_u32("interrupts", &[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])?;
            w.end_node(n)?;
            let n = w.begin_node("pl011@9000000")?;
            w.property_string("compatible", "arm,pl011")?;
            w.property_array_u64("reg", &[0x900_0000, 0x1000])?;
            w.property_array_u32("interrupts", &[0, 1, 4])?;
            w.end_node(n)?;
            extra(w)?;
            let n = w.begin_node("aliases")?;
            w.property_string("serial0", "/pl011@9000000")?;
            w.end_node(n)?;
            let n = w.begin_node("chosen")?;
            chosen(w)?;
            w.end_node(n)?;
            w.end_node(root)
        };
        build(&mut w).unwrap();
        w.finish().unwrap()
    }

    fn stdout(w: &mut FdtWriter) -> FdtWriterResult<()> {
        w.property_string("stdout-path", "/pl011@9000000")
    }

    /// /chosen with the console and one VM node `vm-a`; `props` writes its properties and
    /// `kernel` says whether it gets a kernel module at 0x6000_0000.
    fn vm_dt(props: Build<'_>, kernel: bool) -> Vec<u8> {
        host_dt(true, &|w| {
            stdout(w)?;
            let vm = w.begin_node("vm-a")?;
            w.property_string("compatible", "elvisor,vm")?;
            props(w)?;
            if kernel {
                let k = w.begin_node("kernel")?;
                w.property_string_list(
                    "compatible",
                    vec!["multiboot,kernel".into(), "multiboot,module".into()],
                )?;
                w.property_array_u64("reg", &[0x6000_0000, 0x10_0000])?;
                w.end_node(k)?;
            }
            w.end_node(vm)
        })
    }

    fn good_vm(w: &mut FdtWriter) -> FdtWriterResult<()> {
        w.property_u32("cpus", 2)?;
        w.property_u64("memory", 0x800_0000)
    }

    fn assert_error(dtb: &[u8], node: &str, property: &str) {
        let e = parse_err(dtb);
        assert_eq!(
            (e.node.as_str(), e.property.as_str()),
            (node, property),
            "unexpected error: {e}"
        );
        assert!(!e.problem.is_empty());
    }

    #[test]
    fn built_tree_parses() {
        let p = parse_ok(&vm_dt(
            &|w| {
                good_vm(w)?;
                w.property_string("elvisor,name", "linux")?;
                w.property_array_u32("elvisor,cpu-affinity", &[1, 0])?;
                w.property_string("bootargs", "console=ttyAMA0")?;
                let r = w.begin_node("ramdisk")?;
                w.property_string("compatible", "multiboot,ramdisk")?;
                w.property_array_u64("reg", &[0x6100_0000, 0x20_0000])?;
                w.end_node(r)
            },
            true,
        ));
        assert_eq!(p.psci, Some(PsciConduit::Hvc));
        assert_eq!(p.timer.hyp_virt_intid, None);
        let vm = &p.vms[0];
        assert_eq!(vm.name, "linux");
        assert_eq!(vm.vcpus, 2);
        assert_eq!(vm.cpu_affinity, [1, 0]);
        assert_eq!(vm.memory_bytes, 0x800_0000);
        assert_eq!(vm.bootargs, "console=ttyAMA0");
        assert_eq!(vm.kernel, range(0x6000_0000, 0x10_0000));
        assert_eq!(vm.ramdisk, Some(range(0x6100_0000, 0x20_0000)));
    }

    #[test]
    fn missing_memory_node() {
        assert_error(&host_dt(false, &stdout), "/memory", "reg");
    }

    #[test]
    fn missing_stdout_path() {
        assert_error(&host_dt(true, &|_| Ok(())), "/chosen", "stdout-path");
        assert_eq!(early_console(&host_dt(true, &|_| Ok(()))), None);
        // linux,stdout-path is the fallback.
        let dtb = host_dt(true, &|w| w.property_string("linux,stdout-path", "serial0"));
        assert_eq!(parse_ok(&dtb).uart.base, PhysAddr(0x900_0000));
        // A name that resolves to nothing.
        let dtb = host_dt(true, &|w| w.property_string("stdout-path", "serial7:9600"));
        assert_error(&dtb, "/chosen", "stdout-path");
    }

    #[test]
    fn vm_without_kernel() {
        assert_error(&vm_dt(&good_vm, false), "/chosen/vm-a", "");
    }

    #[test]
    fn vm_bad_memory() {
        let bad_size = |bytes: u64| {
            vm_dt(
                &move |w| {
                    w.property_u32("cpus", 1)?;
                    w.property_u64("memory", bytes)
                },
                true,
            )
        };
        assert_error(&bad_size(0x30_0000), "/chosen/vm-a", "memory");
        assert_error(&bad_size(0), "/chosen/vm-a", "memory");
        let one_cell = vm_dt(
            &|w| {
                w.property_u32("cpus", 1)?;
                w.property_u32("memory", 0x400_0000)
            },
            true,
        );
        assert_error(&one_cell, "/chosen/vm-a", "memory");
        assert_error(
            &vm_dt(&|w| w.property_u32("cpus", 1), true),
            "/chosen/vm-a",
            "memory",
        );
    }

    #[test]
    fn vm_bad_cpus() {
        let cpus = |n: u32| {
            vm_dt(
                &move |w| {
                    w.property_u32("cpus", n)?;
                    w.property_u64("memory", 0x20_0000)
                },
                true,
            )
        };
        assert_error(&cpus(0), "/chosen/vm-a", "cpus");
        assert_error(&cpus(65), "/chosen/vm-a", "cpus");
        // Two host CPUs and no affinity list: the vCPUs share them (i mod 2).
        let p = parse_ok(&cpus(3));
        assert_eq!((p.vms[0].vcpus, p.vms[0].cpu_affinity.len()), (3, 0));
        let affinity = |list: &'static [u32]| {
            vm_dt(
                &move |w| {
                    good_vm(w)?;
                    w.property_array_u32("elvisor,cpu-affinity", list)
                },
                true,
            )
        };
        assert_error(&affinity(&[0]), "/chosen/vm-a", "elvisor,cpu-affinity");
        assert_error(&affinity(&[0, 2]), "/chosen/vm-a", "elvisor,cpu-affinity");
    }

    #[test]
    fn vm_bad_modules() {
        let module = |reg: &'static [u64], second_kernel: bool| {
            vm_dt(
                &move |w| {
                    good_vm(w)?;
                    for name in ["kernel", "kernel2"]
                        .iter()
                        .take(1 + second_kernel as usize)
                    {
                        let k = w.begin_node(name)?;
                        w.property_string("compatible", "multiboot,kernel")?;
                        w.property_array_u64("reg", reg)?;
                        w.end_node(k)?;
                    }
                    Ok(())
                },
                false,
            )
        };
        let path = "/chosen/vm-a/kernel";
        assert_error(&module(&[0x6000_0000, 0], false), path, "reg");
        assert_error(&module(&[0x6000_0000], false), path, "reg");
        // Outside RAM, over the host DTB, over the hypervisor image.
        assert_error(&module(&[0x1000_0000, 0x1000], false), path, "reg");
        assert_error(&module(&[DTB_PA.0, 0x1000], false), path, "reg");
        assert_error(
            &module(&[IMAGE.base.0 + 0x1000, 0x1000], false),
            path,
            "reg",
        );
        assert_error(
            &module(&[0x6000_0000, 0x1000], true),
            "/chosen/vm-a/kernel2",
            "compatible",
        );
        // 1-cell address and size through the VM node's own cells.
        let p = parse_ok(&vm_dt(
            &|w| {
                good_vm(w)?;
                w.property_u32("#address-cells", 1)?;
                w.property_u32("#size-cells", 1)?;
                let k = w.begin_node("kernel")?;
                w.property_string("compatible", "multiboot,kernel")?;
                w.property_array_u32("reg", &[0x6000_0000, 0x8000])?;
                w.end_node(k)
            },
            false,
        ));
        assert_eq!(p.vms[0].kernel, range(0x6000_0000, 0x8000));
    }

    #[test]
    fn duplicate_vm_names() {
        let dtb = host_dt(true, &|w| {
            stdout(w)?;
            for name in ["vm@0", "vm@1"] {
                let vm = w.begin_node(name)?;
                w.property_string("compatible", "elvisor,vm")?;
                w.property_string("elvisor,name", "twin")?;
                good_vm(w)?;
                let k = w.begin_node("kernel")?;
                w.property_string("compatible", "multiboot,kernel")?;
                w.property_array_u64("reg", &[0x6000_0000, 0x1000])?;
                w.end_node(k)?;
                w.end_node(vm)?;
            }
            Ok(())
        });
        assert_error(&dtb, "/chosen/vm@1", "elvisor,name");
    }

    #[test]
    fn reserved_memory() {
        let extra = |w: &mut FdtWriter| -> FdtWriterResult<()> {
            let rm = w.begin_node("reserved-memory")?;
            w.property_u32("#address-cells", 2)?;
            w.property_u32("#size-cells", 2)?;
            w.property_null("ranges")?;
            for (name, base, status) in [
                ("fw@60000000", 0x6000_0000u64, "okay"),
                ("off@70000000", 0x7000_0000, "disabled"),
            ] {
                let n = w.begin_node(name)?;
                w.property_array_u64("reg", &[base, 0x10_0000])?;
                w.property_string("status", status)?;
                w.end_node(n)?;
            }
            let n = w.begin_node("pool")?;
            w.property_string("compatible", "shared-dma-pool")?;
            w.property_u32("size", 0x40_0000)?;
            w.end_node(n)?;
            w.end_node(rm)
        };
        let p = parse_ok(&host_dt_with(true, &extra, &stdout));
        assert_eq!(
            p.reserved,
            [
                IMAGE,
                range(DTB_PA.0, p.reserved[1].size_bytes),
                range(0x6000_0000, 0x10_0000)
            ]
        );
        // A kernel module placed over the firmware's reservation.
        let dtb = host_dt_with(true, &extra, &|w| {
            stdout(w)?;
            let vm = w.begin_node("vm-a")?;
            w.property_string("compatible", "elvisor,vm")?;
            good_vm(w)?;
            let k = w.begin_node("kernel")?;
            w.property_string("compatible", "multiboot,kernel")?;
            w.property_array_u64("reg", &[0x6008_0000, 0x1000])?;
            w.end_node(k)?;
            w.end_node(vm)
        });
        assert_error(&dtb, "/chosen/vm-a/kernel", "reg");
    }

    /// A Raspberry-Pi-like /soc bus holding a second PL011 at bus address 0x7e20_1000.
    fn soc(ranges: Option<&'static [u32]>) -> impl Fn(&mut FdtWriter) -> FdtWriterResult<()> {
        move |w| {
            let n = w.begin_node("soc")?;
            w.property_u32("#address-cells", 1)?;
            w.property_u32("#size-cells", 1)?;
            if let Some(ranges) = ranges {
                w.property_array_u32("ranges", ranges)?;
            }
            let s = w.begin_node("serial@7e201000")?;
            w.property_string_list(
                "compatible",
                vec!["arm,pl011".into(), "arm,primecell".into()],
            )?;
            w.property_array_u32("reg", &[0x7e20_1000, 0x200])?;
            w.property_array_u32("interrupts", &[0, 0x79, 4])?;
            w.end_node(s)?;
            w.end_node(n)
        }
    }

    fn soc_console(w: &mut FdtWriter) -> FdtWriterResult<()> {
        w.property_string("stdout-path", "/soc/serial@7e201000:115200n8")
    }

    #[test]
    fn ranges_translation() {
        const PI_RANGES: &[u32] = &[
            0x7e00_0000,
            0,
            0xfe00_0000,
            0x180_0000, //
            0x4000_0000,
            0,
            0xff80_0000,
            0x80_0000,
        ];
        let dtb = host_dt_with(true, &soc(Some(PI_RANGES)), &soc_console);
        let p = parse_ok(&dtb);
        assert_eq!(p.uart.base, PhysAddr(0xfe20_1000));
        assert_eq!(p.uart.intid, Some(153));
        assert_eq!(early_console(&dtb), Some(PhysAddr(0xfe20_1000)));

        // Empty ranges: identity.
        let dtb = host_dt_with(true, &soc(Some(&[])), &soc_console);
        assert_eq!(parse_ok(&dtb).uart.base, PhysAddr(0x7e20_1000));

        // No ranges: not translatable, and the error names the bus.
        let dtb = host_dt_with(true, &soc(None), &soc_console);
        assert_error(&dtb, "/soc", "ranges");
        assert_eq!(early_console(&dtb), None);

        // A ranges entry that does not cover the device.
        let dtb = host_dt_with(
            true,
            &soc(Some(&[0x4000_0000, 0, 0xff80_0000, 0x80_0000])),
            &soc_console,
        );
        assert_error(&dtb, "/soc", "ranges");
    }

    #[test]
    fn non_pl011_console() {
        // stdout-path names a UART we cannot drive and no serialN alias names a PL011.
        let extra = |w: &mut FdtWriter| -> FdtWriterResult<()> {
            let n = w.begin_node("serial@9100000")?;
            w.property_string("compatible", "ns16550a")?;
            w.property_array_u64("reg", &[0x910_0000, 0x100])?;
            w.end_node(n)
        };
        let dtb = host_dt_with(true, &extra, &|w| {
            w.property_string("stdout-path", "/serial@9100000")
        });
        // serial0 names the PL011, so it is used instead.
        assert_eq!(parse_ok(&dtb).uart.base, PhysAddr(0x900_0000));
    }

    /// Replaces the first node called `name` and its subtree with FDT_NOP tokens, as libfdt's
    /// `fdt_nop_node` (which QEMU uses) does.
    fn nop_node(blob: &[u8], name: &str) -> Vec<u8> {
        let dtb = Dtb::new(blob).unwrap();
        let mut pos = 0;
        let (begin, end) = loop {
            let (token, next) = dtb.tree.token(pos).unwrap();
            pos = match token {
                Token::Begin { name: n, body } if n == name => {
                    break (pos, Node::skip_subtree(&dtb.tree, body).unwrap());
                }
                Token::Begin { body, .. } => body,
                Token::Prop { next, .. } => next,
                _ => next,
            };
        };
        let off_struct = be32(blob, 8).unwrap() as usize;
        let mut out = blob.to_vec();
        for word in out[off_struct + begin..off_struct + end].chunks_mut(4) {
            word.copy_from_slice(&FDT_NOP.to_be_bytes());
        }
        out
    }

    #[test]
    fn nop_tokens_are_skipped() {
        // QEMU's raspi4b blob (rpi4b_as_qemu_passes_it) is full of them; here, one node's worth
        // between properties and subnodes, between siblings and before FDT_END_NODE.
        let p = parse_ok(&nop_node(GICV3_VM, "psci"));
        assert_eq!(p.psci, None);
        assert_eq!(p.vms.len(), 1);
        let no_kernel = nop_node(GICV3_VM, "kernel");
        let e = parse_err(&no_kernel);
        assert_eq!(
            (e.node.as_str(), e.property.as_str()),
            ("/chosen/vm-smoke", "")
        );
        let p = parse_ok(&nop_node(GICV3_VM, "vm-smoke"));
        assert!(p.vms.is_empty());
        assert_eq!(
            early_console(&nop_node(GICV3_VM, "aliases")),
            Some(PhysAddr(0x900_0000))
        );
    }

    #[test]
    fn malformed_blobs_fail_cleanly() {
        assert!(parse(&[], DTB_PA, IMAGE).is_err());
        assert!(parse(&GICV3_VM[..GICV3_VM.len() - 1], DTB_PA, IMAGE).is_err());
        // A property token turned into FDT_END_NODE unbalances the tree.
        let mut bad = GICV3_VM.to_vec();
        let first = be32(&bad, 8).unwrap() as usize + 8;
        assert_eq!(be32(&bad, first), Some(FDT_PROP));
        bad[first..first + 4].copy_from_slice(&FDT_END_NODE.to_be_bytes());
        assert!(parse(&bad, DTB_PA, IMAGE).is_err());
        assert_eq!(early_console(&bad), None);
        assert_eq!(early_bootargs(&bad), None);
    }

    /// A node's name and its properties' names and values.
    type NodeDump = (String, Vec<(String, Vec<u8>)>);

    /// The `fdt` crate, as an independent reader, sees the same nodes and properties as ours
    /// on the blobs it can read (those without FDT_NOP tokens).
    #[test]
    fn reader_agrees_with_fdt_crate() {
        for blob in [GICV3, GICV2, GICV3_VM, RPI4B] {
            let theirs = fdt::Fdt::new(blob).unwrap();
            let dtb = Dtb::new(blob).unwrap();
            let mut lin = Lineage::root(&dtb).unwrap();
            let mut ours = Vec::new();
            let _ = visit::<()>(&mut lin, &mut |l| {
                let props: Vec<(String, Vec<u8>)> = l
                    .node()
                    .properties()
                    .map(|p| (p.name.to_string(), p.value.to_vec()))
                    .collect();
                let name = if l.last() == 0 { "/" } else { l.node().name };
                ours.push((name.to_string(), props));
                ControlFlow::Continue(())
            });
            let theirs: Vec<NodeDump> = theirs
                .all_nodes()
                .map(|n| {
                    let props = n
                        .properties()
                        .map(|p| (p.name.to_string(), p.value.to_vec()))
                        .collect();
                    (n.name.to_string(), props)
                })
                .collect();
            assert_eq!(ours, theirs);
            let rsv: Vec<PhysRange> = fdt::Fdt::new(blob)
                .unwrap()
                .memory_reservations()
                .map(|r| range(r.address() as u64, r.size() as u64))
                .collect();
            assert_eq!(memreserve(dtb.blob).unwrap(), rsv);
        }
    }

    /// Flips bytes all over real blobs: every result must be a value, never a panic.
    #[test]
    fn mutated_blobs_never_panic() {
        let mut seed: u64 = 0x1234_5678_9abc_def0;
        let mut next = move || {
            // xorshift64*
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for (blob, rounds) in [(GICV3_VM, 3000), (RPI4B_QEMU, 300)] {
            let used = fdt_total_size(blob).unwrap().min(blob.len());
            for _ in 0..rounds {
                let mut copy = blob[..used].to_vec();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % used as u64) as usize;
                    copy[at] = match next() % 4 {
                        0 => 0,
                        1 => 0xff,
                        2 => copy[at] ^ (1 << (next() % 8)),
                        _ => next() as u8,
                    };
                }
                let _ = parse(&copy, DTB_PA, IMAGE);
                let _ = early_console(&copy);
                let _ = early_bootargs(&copy);
                let cut = (next() % used as u64) as usize;
                let _ = parse(&copy[..cut], DTB_PA, IMAGE);
            }
        }
    }
}
