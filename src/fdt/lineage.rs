//! Navigation: a node together with its ancestors, path lookup and tree walks.

use alloc::string::String;
use core::fmt;
use core::ops::ControlFlow;

use super::ConfigError;
use super::props::{is_enabled, str_prop};
use super::reader::{Dtb, MAX_DEPTH, Node};

/// A node and all its ancestors, root first. Nodes do not know their parent,
/// and `ranges` translation and inherited `interrupt-parent` need the whole chain.
#[derive(Clone, Copy)]
pub(crate) struct Lineage<'a> {
    root: Node<'a>,
    /// Levels 1.. (level 0 is `root`); `descendants[..len]` are all `Some`.
    descendants: [Option<Node<'a>>; MAX_DEPTH],
    len: usize,
}

impl<'a> Lineage<'a> {
    pub(crate) fn root(dtb: &Dtb<'a>) -> Option<Self> {
        let root = dtb.root()?;
        Some(Self {
            root,
            descendants: [None; MAX_DEPTH],
            len: 0,
        })
    }

    /// Index of the last level (0 for the root).
    pub(crate) fn last(&self) -> usize {
        self.len
    }

    pub(crate) fn level(&self, level: usize) -> Node<'a> {
        match level.checked_sub(1) {
            Some(i) if i < self.len => self.descendants.get(i).copied().flatten(),
            _ => None,
        }
        .unwrap_or(self.root)
    }

    pub(crate) fn node(&self) -> Node<'a> {
        self.level(self.last())
    }

    pub(crate) fn push(&mut self, child: Node<'a>) -> bool {
        match self.descendants.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(child);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    pub(crate) fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    pub(crate) fn write_path(&self, upto: usize, out: &mut impl fmt::Write) -> fmt::Result {
        if upto == 0 {
            return out.write_str("/");
        }
        for level in 1..=upto.min(self.len) {
            out.write_str("/")?;
            out.write_str(self.level(level).name)?;
        }
        Ok(())
    }

    pub(crate) fn path_to(&self, level: usize) -> String {
        let mut path = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_path(level, &mut path);
        path
    }

    pub(crate) fn path(&self) -> String {
        self.path_to(self.last())
    }

    pub(crate) fn error(&self, fault: Fault) -> ConfigError {
        ConfigError::new(&self.path_to(fault.level), fault.property, fault.problem)
    }
}

/// A problem found by the allocation-free helpers: which level of a [`Lineage`] it concerns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fault {
    pub(crate) level: usize,
    pub(crate) property: &'static str,
    pub(crate) problem: &'static str,
}

/// Descends from `lin` along the `/`-separated `path`. A component without a unit address
/// matches a node by its name alone (`/memory` finds `memory@40000000`).
pub(crate) fn descend<'a>(lin: &mut Lineage<'a>, path: &str) -> bool {
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
pub(crate) fn lookup<'a>(dt: &Dtb<'a>, path: &str) -> Option<Lineage<'a>> {
    if !path.starts_with('/') {
        return None;
    }
    let mut lin = Lineage::root(dt)?;
    descend(&mut lin, path).then_some(lin)
}

/// A path as used by `stdout-path`: absolute, or an alias optionally followed by `/more`.
/// Aliases are looked up once (an alias naming another alias is not followed).
pub(crate) fn resolve_path<'a>(dt: &Dtb<'a>, path: &str) -> Option<Lineage<'a>> {
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
pub(crate) fn visit<'a, B>(
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
pub(crate) fn find_first<'a>(
    root: &Lineage<'a>,
    pred: &dyn Fn(Node<'a>) -> bool,
) -> Option<Lineage<'a>> {
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
