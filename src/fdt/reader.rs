//! The flattened device-tree format (Devicetree Specification v0.4, chapter 5): header, tokens,
//! nodes and properties, read zero-copy with every access bounds-checked.

use alloc::vec::Vec;

use crate::mm::{PhysAddr, PhysRange};

pub(crate) const FDT_MAGIC: u32 = 0xd00d_feed;
pub(crate) const FDT_HEADER_BYTES: usize = 40;
pub(crate) const FDT_BEGIN_NODE: u32 = 0x1;
pub(crate) const FDT_END_NODE: u32 = 0x2;
pub(crate) const FDT_PROP: u32 = 0x3;
pub(crate) const FDT_NOP: u32 = 0x4;
pub(crate) const FDT_END: u32 = 0x9;

/// Deepest node nesting accepted (root = 1). Real trees stay below 10; [`Lineage`] keeps a
/// `MAX_DEPTH`-entry stack and [`visit`] recurses once per level.
pub(crate) const MAX_DEPTH: usize = 16;

pub(crate) fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let cell: [u8; 4] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(cell))
}

pub(crate) fn be64(bytes: &[u8], offset: usize) -> Option<u64> {
    let end = offset.checked_add(8)?;
    let cells: [u8; 8] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u64::from_be_bytes(cells))
}

pub(crate) fn align4(n: usize) -> Option<usize> {
    Some(n.checked_add(3)? & !3)
}

/// The header fields we use, as byte offsets and lengths into the blob.
pub(crate) struct Header {
    pub(crate) total: usize,
    pub(crate) off_struct: usize,
    pub(crate) size_struct: usize,
    pub(crate) off_strings: usize,
    pub(crate) size_strings: usize,
    pub(crate) off_rsvmap: usize,
}

pub(crate) fn header(dtb: &[u8]) -> Result<Header, &'static str> {
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
pub(crate) struct Dtb<'a> {
    /// The blob, cut to `totalsize`.
    pub(crate) blob: &'a [u8],
    pub(crate) tree: Tree<'a>,
}

/// The structure and strings blocks: all a [`Node`] needs to read itself.
#[derive(Clone, Copy)]
pub(crate) struct Tree<'a> {
    pub(crate) structs: &'a [u8],
    pub(crate) strings: &'a [u8],
    /// The strings block as text when all of it is UTF-8 (the usual case), checked once:
    /// property lookups then compare names without re-validating them (that validation was
    /// most of the hypervisor's boot time before the first guest instruction).
    pub(crate) strings_text: Option<&'a str>,
}

/// A node: its name and where its properties start in the structure block.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a> {
    pub(crate) tree: Tree<'a>,
    /// The unit name ("" for the root, which [`Lineage`] writes as "/").
    pub(crate) name: &'a str,
    /// Offset of the first token after the node's FDT_BEGIN_NODE and name.
    pub(crate) body: usize,
}

/// One property of a node.
#[derive(Clone, Copy)]
pub(crate) struct Property<'a> {
    pub(crate) name: &'a str,
    pub(crate) value: &'a [u8],
}

/// A token of the structure block, decoded. Offsets are into the structure block.
pub(crate) enum Token<'a> {
    /// A node begins; `body` is where its properties start.
    Begin {
        name: &'a str,
        body: usize,
    },
    End,
    /// A property: its name is the string at `name_off` in the strings block, resolved only
    /// when asked for ([`Tree::string`]; walks over properties never need it).
    Prop {
        name_off: usize,
        value: &'a [u8],
        next: usize,
    },
    Nop,
    Finish,
}

impl<'a> Dtb<'a> {
    /// Checks the header and walks every token once: nesting balanced and at most
    /// [`MAX_DEPTH`] deep, names NUL-terminated UTF-8, property values and name offsets inside
    /// their blocks, properties before subnodes, exactly one root, then FDT_END.
    pub(crate) fn new(dtb: &'a [u8]) -> Result<Self, &'static str> {
        let h = header(dtb)?;
        let blob = dtb.get(..h.total).ok_or("truncated blob")?;
        let block = |off: usize, len: usize| blob.get(off..off.checked_add(len)?);
        let strings =
            block(h.off_strings, h.size_strings).ok_or("strings block outside the blob")?;
        let tree = Tree {
            structs: block(h.off_struct, h.size_struct)
                .ok_or("structure block outside the blob")?,
            strings,
            strings_text: core::str::from_utf8(strings).ok(),
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
                Token::Prop {
                    next: after,
                    name_off,
                    ..
                } => {
                    if !props_allowed {
                        return Err("a property outside a node or after a subnode");
                    }
                    tree.string(name_off).ok_or("bad property name offset")?;
                    pos = after;
                }
                Token::Nop => pos = next,
                Token::Finish if depth == 0 && seen_root => return Ok(Self { blob, tree }),
                Token::Finish => return Err("FDT_END inside a node or before the root"),
            }
        }
    }

    /// The root node (the first node of the structure block).
    pub(crate) fn root(&self) -> Option<Node<'a>> {
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
    pub(crate) fn token(&self, pos: usize) -> Result<(Token<'a>, usize), &'static str> {
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
                let after = align4(len)
                    .and_then(|n| start.checked_add(n))
                    .ok_or("property too long")?;
                Token::Prop {
                    name_off,
                    value,
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
    pub(crate) fn string(&self, offset: usize) -> Option<&'a str> {
        if let Some(text) = self.strings_text {
            // `get` refuses an offset inside a multi-byte character, as validation would.
            let rest = text.get(offset..)?;
            let len = rest.bytes().position(|b| b == 0)?;
            return rest.get(..len);
        }
        let rest = self.strings.get(offset..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        core::str::from_utf8(rest.get(..len)?).ok()
    }
}

impl<'a> Node<'a> {
    pub(crate) fn properties(self) -> impl Iterator<Item = Property<'a>> {
        let mut pos = Some(self.body);
        core::iter::from_fn(move || {
            loop {
                match self.tree.token(pos?).ok() {
                    Some((Token::Nop, next)) => pos = Some(next),
                    Some((
                        Token::Prop {
                            name_off,
                            value,
                            next,
                        },
                        _,
                    )) => {
                        pos = Some(next);
                        let name = self.tree.string(name_off)?;
                        return Some(Property { name, value });
                    }
                    _ => {
                        pos = None;
                        return None;
                    }
                }
            }
        })
    }

    pub(crate) fn property(self, name: &str) -> Option<Property<'a>> {
        // Names are compared in the strings block where they are, byte for byte, instead of
        // decoding every property on the way (the lookups of platform discovery are the bulk
        // of the hypervisor's boot).
        let t = self.tree;
        let mut pos = self.body;
        loop {
            match be32(t.structs, pos)? {
                FDT_NOP => pos = pos.checked_add(4)?,
                FDT_PROP => {
                    let len = be32(t.structs, pos.checked_add(4)?)? as usize;
                    let off = be32(t.structs, pos.checked_add(8)?)? as usize;
                    let end = off.checked_add(name.len())?;
                    if t.strings.get(off..end) == Some(name.as_bytes())
                        && t.strings.get(end) == Some(&0)
                    {
                        return match t.token(pos).ok()? {
                            (Token::Prop { value, .. }, _) => Some(Property {
                                name: t.string(off)?,
                                value,
                            }),
                            _ => None,
                        };
                    }
                    pos = pos.checked_add(12)?.checked_add(align4(len)?)?;
                }
                _ => return None,
            }
        }
    }

    /// Offset of the first token after the node's properties.
    pub(crate) fn end_of_properties(self) -> Option<usize> {
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
    pub(crate) fn skip_subtree(tree: &Tree<'a>, body: usize) -> Option<usize> {
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

    pub(crate) fn children(self) -> impl Iterator<Item = Node<'a>> {
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
pub(crate) fn memreserve(blob: &[u8]) -> Result<Vec<PhysRange>, &'static str> {
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

#[cfg(test)]
/// Replaces the first node called `name` and its subtree with FDT_NOP tokens, as libfdt's
/// `fdt_nop_node` (which QEMU uses) does.
pub(crate) fn nop_node(blob: &[u8], name: &str) -> Vec<u8> {
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
