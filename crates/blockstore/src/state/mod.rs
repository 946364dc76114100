//! In-memory metadata: the mapping trees, volumes, chunk reference counts and the allocator.
//!
//! Every volume (original, snapshot or clone) owns a root into a forest of copy-on-write radix
//! trees (4 levels of 256 slots, indexed by chunk number). A snapshot shares its source's root
//! and bumps the root's reference count, so it costs the same for any volume size. A write
//! copies the shared nodes on its path first (bumping the counts of their children), which is
//! the lazy reference counting of dm-thin's persistent-data, kept in memory.
//!
//! Reference *decrements* are deferred until the commit that contains them is durable
//! ([`State::take_pending`], [`State::apply_releases`]): a count in memory is therefore never
//! lower than in any state that could be recovered after a crash, so a chunk that looks
//! exclusive really is, and a freed chunk is never reused before its release is on disk.
//!
//! The checkpoint's encoding and decoding are in `checkpoint.rs`.

mod checkpoint;

use std::collections::{BTreeMap, HashMap};

use crate::VolumeKind;
use crate::format::{DecodeError, Enc, Record};

/// Bytes per chunk, the unit of allocation and of snapshot sharing.
pub const CHUNK_SIZE: u64 = 64 * 1024;
/// Bytes per mask block, the unit of the per-chunk "written" mask (one bit per block);
/// not the logical block a volume is addressed in, which is the caller's business.
pub const MASK_BLOCK_SIZE: u64 = 4096;
/// Mask with every block of a chunk present.
pub(crate) const FULL_MASK: u16 = 0xFFFF;
/// Largest volume: 64 TiB.
pub const MAX_VOLUME_SIZE: u64 = 64 << 40;
/// Largest chunk number (chunk numbers are u32, 0 means "none").
pub(crate) const MAX_CHUNK: u32 = u32::MAX - 1;

const FANOUT_BITS: u32 = 8;
const FANOUT: usize = 1 << FANOUT_BITS;
const DEPTH: u32 = 4;

/// One chunk's mapping. Block `b` of the chunk reads from `phys` if mask bit `b` is set, else
/// from `under` if it is not 0, else zeros. `under` lets a small write after a snapshot copy
/// only the blocks it touches; it is dropped once every block is in `phys`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    pub phys: u32,
    pub under: u32,
    pub mask: u16,
}

/// Where one block's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Zero,
    Chunk(u32),
}

impl Entry {
    pub(crate) const EMPTY: Entry = Entry {
        phys: 0,
        under: 0,
        mask: 0,
    };

    pub(crate) fn is_empty(&self) -> bool {
        self.phys == 0
    }

    pub(crate) fn is_valid(&self) -> bool {
        if self.phys == 0 {
            return self.under == 0 && self.mask == 0;
        }
        self.phys <= MAX_CHUNK
            && self.under <= MAX_CHUNK
            && self.mask != 0
            && (self.under == 0 || (self.mask != FULL_MASK && self.under != self.phys))
    }

    pub(crate) fn source(&self, block: u64) -> Source {
        if self.mask & (1 << block) != 0 {
            Source::Chunk(self.phys)
        } else if self.under != 0 {
            Source::Chunk(self.under)
        } else {
            Source::Zero
        }
    }

    /// Whether block `b` has storage (for GET LBA STATUS).
    pub(crate) fn block_mapped(&self, block: u64) -> bool {
        self.mask & (1 << block) != 0 || self.under != 0
    }
}

enum Body {
    Internal(Box<[u32; FANOUT]>),
    Leaf(Box<[Entry; FANOUT]>),
}

struct Node {
    refs: u32,
    body: Body,
}

/// A reference to drop once the commit holding the change is durable.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Release {
    Node(u32),
    Chunk(u32),
}

/// Metadata of one volume, snapshot or clone.
#[derive(Clone, Debug)]
pub(crate) struct VolMeta {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub root: u32,
    pub kind: VolumeKind,
    /// The volume this one was made from (0 = none).
    pub parent: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
}

/// The whole metadata state of a pool.
pub(crate) struct State {
    nodes: Vec<Option<Node>>,
    free_nodes: Vec<u32>,
    pub vols: BTreeMap<u64, VolMeta>,
    pub names: HashMap<String, u64>,
    pub next_vol_id: u64,
    /// References to each chunk from leaf entries (`phys` and `under`).
    chunk_refs: Vec<u32>,
    free_chunks: Vec<u32>,
    /// Chunks whose last reference went since [`State::take_freed`]: their blocks are given
    /// back to the file system.
    freed: Vec<u32>,
    /// Chunks in use, including those whose release is not yet durable.
    pub used_chunks: u64,
    /// Pool size limit in chunks.
    pub limit_chunks: u32,
    /// Largest chunk number a record may name (bounded by the data file's size on open).
    pub chunk_bound: u32,
    /// Records since the last commit, encoded.
    pub log: Enc,
    logging: bool,
    pending: Vec<Release>,
}

pub(crate) type Res<T> = Result<T, DecodeError>;

fn bad(reason: impl Into<String>) -> DecodeError {
    DecodeError::new(0, reason)
}

impl State {
    pub(crate) fn new(limit_chunks: u32) -> State {
        State {
            nodes: vec![None],
            free_nodes: Vec::new(),
            vols: BTreeMap::new(),
            names: HashMap::new(),
            next_vol_id: 1,
            chunk_refs: vec![0],
            free_chunks: Vec::new(),
            freed: Vec::new(),
            used_chunks: 0,
            limit_chunks,
            chunk_bound: MAX_CHUNK,
            log: Enc::default(),
            logging: true,
            pending: Vec::new(),
        }
    }

    // ---------------------------------------------------------------- nodes

    fn node(&self, id: u32) -> &Node {
        self.nodes[id as usize].as_ref().expect("live node")
    }

    fn node_mut(&mut self, id: u32) -> &mut Node {
        self.nodes[id as usize].as_mut().expect("live node")
    }

    fn alloc_node(&mut self, body: Body) -> u32 {
        let n = Node { refs: 1, body };
        if let Some(id) = self.free_nodes.pop() {
            self.nodes[id as usize] = Some(n);
            id
        } else {
            self.nodes.push(Some(n));
            (self.nodes.len() - 1) as u32
        }
    }

    fn new_body(level: u32) -> Body {
        if level == DEPTH - 1 {
            Body::Leaf(Box::new([Entry::EMPTY; FANOUT]))
        } else {
            Body::Internal(Box::new([0; FANOUT]))
        }
    }

    /// Copies a shared node; the copy's children gain a reference.
    fn clone_node(&mut self, id: u32) -> u32 {
        let body = match &self.node(id).body {
            Body::Internal(c) => Body::Internal(c.clone()),
            Body::Leaf(e) => Body::Leaf(e.clone()),
        };
        match &body {
            Body::Internal(c) => {
                for &child in c.iter().filter(|&&c| c != 0) {
                    self.node_mut(child).refs += 1;
                }
            }
            Body::Leaf(e) => {
                for en in e.iter().filter(|e| !e.is_empty()) {
                    self.chunk_ref(en.phys);
                    if en.under != 0 {
                        self.chunk_ref(en.under);
                    }
                }
            }
        }
        self.alloc_node(body)
    }

    fn chunk_ref(&mut self, c: u32) {
        let i = c as usize;
        if i >= self.chunk_refs.len() {
            self.chunk_refs.resize(i + 1, 0);
        }
        if self.chunk_refs[i] == 0 {
            self.used_chunks += 1;
        }
        self.chunk_refs[i] += 1;
    }

    pub(crate) fn chunk_refs(&self, c: u32) -> u32 {
        self.chunk_refs.get(c as usize).copied().unwrap_or(0)
    }

    fn release(&mut self, r: Release) {
        if self.logging {
            self.pending.push(r);
        } else {
            self.release_now(r);
        }
    }

    fn release_now(&mut self, r: Release) {
        match r {
            Release::Chunk(c) => {
                let rc = &mut self.chunk_refs[c as usize];
                *rc -= 1;
                if *rc == 0 {
                    self.used_chunks -= 1;
                    self.free_chunks.push(c);
                    self.freed.push(c);
                }
            }
            Release::Node(id) => {
                let n = self.node_mut(id);
                n.refs -= 1;
                if n.refs > 0 {
                    return;
                }
                let node = self.nodes[id as usize].take().expect("live node");
                self.free_nodes.push(id);
                match node.body {
                    Body::Internal(c) => {
                        for &child in c.iter().filter(|&&c| c != 0) {
                            self.release_now(Release::Node(child));
                        }
                    }
                    Body::Leaf(e) => {
                        for en in e.iter().filter(|e| !e.is_empty()) {
                            self.release_now(Release::Chunk(en.phys));
                            if en.under != 0 {
                                self.release_now(Release::Chunk(en.under));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Takes the records and deferred releases of the changes made so far (one commit).
    pub(crate) fn take_pending(&mut self) -> (Vec<u8>, Vec<Release>) {
        (
            std::mem::take(&mut self.log.buf),
            std::mem::take(&mut self.pending),
        )
    }

    /// Applies releases whose commit is durable.
    pub(crate) fn apply_releases(&mut self, rel: Vec<Release>) {
        for r in rel {
            self.release_now(r);
        }
    }

    /// The chunks freed since the last call that are still free, as runs `(first, count)`:
    /// what may be given back to the file system now. Called under the state lock, so none
    /// of them can be allocated again before that is done.
    pub(crate) fn take_freed(&mut self) -> Vec<(u32, u32)> {
        let mut c = std::mem::take(&mut self.freed);
        c.retain(|&c| self.chunk_refs(c) == 0);
        runs(c)
    }

    /// Every free chunk below the highest used one, as runs `(first, count)`, and the first
    /// chunk past the highest used one (for a pool just opened).
    pub(crate) fn free_runs(&self) -> (Vec<(u32, u32)>, u32) {
        let free = (1..self.chunk_refs.len() as u32)
            .filter(|&c| self.chunk_refs[c as usize] == 0)
            .collect();
        (runs(free), self.chunk_refs.len().max(1) as u32)
    }

    // ---------------------------------------------------------------- allocator

    /// Allocates a chunk, or `None` when the pool limit is reached.
    pub(crate) fn alloc_chunk(&mut self) -> Option<u32> {
        if self.used_chunks >= self.limit_chunks as u64 {
            return None;
        }
        let c = loop {
            match self.free_chunks.pop() {
                Some(c) if self.chunk_refs(c) == 0 => break c,
                Some(_) => continue,
                None => {
                    let next = self.chunk_refs.len().max(1);
                    if next as u64 > MAX_CHUNK as u64 {
                        return None;
                    }
                    self.chunk_refs.push(0);
                    break next as u32;
                }
            }
        };
        // Reserve it: a reference is added by the SetEntry that maps it.
        self.chunk_ref(c);
        Some(c)
    }

    /// Drops the reservation taken by [`State::alloc_chunk`]. Safe at once: the chunk was never
    /// mapped by a durable record, or its SetEntry added a reference of its own.
    pub(crate) fn unreserve_chunk(&mut self, c: u32) {
        self.release_now(Release::Chunk(c));
    }

    /// Rebuilds the free list after loading: every chunk below the highest used one that has
    /// no reference.
    pub(crate) fn rebuild_free_list(&mut self) {
        while self.chunk_refs.len() > 1 && *self.chunk_refs.last().unwrap() == 0 {
            self.chunk_refs.pop();
        }
        self.free_chunks = (1..self.chunk_refs.len() as u32)
            .rev()
            .filter(|&c| self.chunk_refs[c as usize] == 0)
            .collect();
        self.used_chunks = self.chunk_refs.iter().filter(|&&r| r > 0).count() as u64;
    }

    // ---------------------------------------------------------------- lookups

    fn digit(idx: u32, level: u32) -> usize {
        ((idx >> (FANOUT_BITS * (DEPTH - 1 - level))) as usize) & (FANOUT - 1)
    }

    /// The entry of chunk `idx` under `root`, for a read: [`State::lookup`] without the
    /// reference counts it takes to tell whether a write may go in place.
    pub(crate) fn entry(&self, root: u32, idx: u32) -> Entry {
        let mut cur = root;
        for level in 0..DEPTH {
            if cur == 0 {
                return Entry::EMPTY;
            }
            match &self.node(cur).body {
                Body::Internal(c) => cur = c[Self::digit(idx, level)],
                Body::Leaf(e) => return e[Self::digit(idx, level)],
            }
        }
        Entry::EMPTY
    }

    /// The entry of chunk `idx` under `root`, and whether every node on the path and the
    /// chunk itself have a single reference (an in-place write is then safe).
    pub(crate) fn lookup(&self, root: u32, idx: u32) -> (Entry, bool) {
        let mut cur = root;
        let mut excl = true;
        for level in 0..DEPTH {
            if cur == 0 {
                return (Entry::EMPTY, false);
            }
            let n = self.node(cur);
            excl &= n.refs == 1;
            match &n.body {
                Body::Internal(c) => cur = c[Self::digit(idx, level)],
                Body::Leaf(e) => {
                    let en = e[Self::digit(idx, level)];
                    let excl = excl && en.phys != 0 && self.chunk_refs(en.phys) == 1;
                    return (en, excl);
                }
            }
        }
        (Entry::EMPTY, false)
    }

    /// The leaf holding chunk `idx` of `vol`, copying shared nodes on the way.
    fn leaf_mut(&mut self, vol: u64, idx: u32) -> u32 {
        let root = self.vols[&vol].root;
        let mut cur = if root == 0 {
            self.alloc_node(Self::new_body(0))
        } else if self.node(root).refs > 1 {
            let c = self.clone_node(root);
            self.release(Release::Node(root));
            c
        } else {
            root
        };
        if cur != root {
            self.vols.get_mut(&vol).expect("volume").root = cur;
        }
        for level in 0..DEPTH - 1 {
            let slot = Self::digit(idx, level);
            let child = match &self.node(cur).body {
                Body::Internal(c) => c[slot],
                Body::Leaf(_) => unreachable!("leaf above the last level"),
            };
            let next = if child == 0 {
                self.alloc_node(Self::new_body(level + 1))
            } else if self.node(child).refs > 1 {
                let c = self.clone_node(child);
                self.release(Release::Node(child));
                c
            } else {
                child
            };
            if next != child {
                match &mut self.node_mut(cur).body {
                    Body::Internal(c) => c[slot] = next,
                    Body::Leaf(_) => unreachable!(),
                }
            }
            cur = next;
        }
        cur
    }

    // ---------------------------------------------------------------- mutations

    /// Applies one record (from a live operation or from the log). Live operations are checked
    /// before they are turned into records; the checks here protect replay from bad input.
    pub(crate) fn apply(&mut self, rec: Record) -> Res<()> {
        match &rec {
            Record::CreateVolume {
                id,
                size,
                created,
                name,
            } => {
                self.check_new(*id, name)?;
                check_size(*size)?;
                self.insert_vol(VolMeta {
                    id: *id,
                    name: name.clone(),
                    size: *size,
                    root: 0,
                    kind: VolumeKind::Volume,
                    parent: 0,
                    created: *created,
                });
            }
            Record::Snapshot {
                src,
                id,
                kind,
                created,
                name,
            } => {
                self.check_new(*id, name)?;
                let s = self
                    .vols
                    .get(src)
                    .ok_or_else(|| bad(format!("no volume {src}")))?;
                let (root, size) = (s.root, s.size);
                if root != 0 {
                    self.node_mut(root).refs += 1;
                }
                self.insert_vol(VolMeta {
                    id: *id,
                    name: name.clone(),
                    size,
                    root,
                    kind: *kind,
                    parent: *src,
                    created: *created,
                });
            }
            Record::Delete { id } => {
                let v = self
                    .vols
                    .remove(id)
                    .ok_or_else(|| bad(format!("no volume {id}")))?;
                self.names.remove(&v.name);
                for d in self.vols.values_mut().filter(|d| d.parent == *id) {
                    d.parent = v.parent;
                }
                if v.root != 0 {
                    self.release(Release::Node(v.root));
                }
            }
            Record::Resize { id, size } => {
                check_size(*size)?;
                let old = self
                    .vols
                    .get(id)
                    .ok_or_else(|| bad(format!("no volume {id}")))?
                    .size;
                if *size < old {
                    let keep = (*size / CHUNK_SIZE) as u32;
                    let root = self.vols[id].root;
                    let mut drop = Vec::new();
                    self.collect_mapped(root, keep, u32::MAX, &mut drop);
                    for idx in drop {
                        self.set_entry_inner(*id, idx, Entry::EMPTY);
                    }
                }
                self.vols.get_mut(id).expect("volume").size = *size;
            }
            Record::SetEntry { vol, idx, entry } => {
                let v = self
                    .vols
                    .get(vol)
                    .ok_or_else(|| bad(format!("no volume {vol}")))?;
                if (*idx as u64) >= v.size / CHUNK_SIZE {
                    return Err(bad(format!("chunk {idx} beyond the end of volume {vol}")));
                }
                if !entry.is_valid()
                    || entry.phys > self.chunk_bound
                    || entry.under > self.chunk_bound
                {
                    return Err(bad(format!("bad entry {entry:?}")));
                }
                self.set_entry_inner(*vol, *idx, *entry);
            }
            Record::SetLimit { chunks } => self.limit_chunks = *chunks,
        }
        if self.logging {
            rec.encode(&mut self.log);
        }
        Ok(())
    }

    fn set_entry_inner(&mut self, vol: u64, idx: u32, e: Entry) {
        let leaf = self.leaf_mut(vol, idx);
        let slot = Self::digit(idx, DEPTH - 1);
        let old = match &self.node(leaf).body {
            Body::Leaf(en) => en[slot],
            Body::Internal(_) => unreachable!(),
        };
        if old == e {
            return;
        }
        if e.phys != 0 {
            self.chunk_ref(e.phys);
        }
        if e.under != 0 {
            self.chunk_ref(e.under);
        }
        match &mut self.node_mut(leaf).body {
            Body::Leaf(en) => en[slot] = e,
            Body::Internal(_) => unreachable!(),
        }
        if old.phys != 0 {
            self.release(Release::Chunk(old.phys));
        }
        if old.under != 0 {
            self.release(Release::Chunk(old.under));
        }
    }

    fn check_new(&self, id: u64, name: &str) -> Res<()> {
        // The last id is refused too: the next id follows every id in use.
        if id == 0 || id == u64::MAX {
            return Err(bad(format!("volume id {id} out of range")));
        }
        if self.vols.contains_key(&id) {
            return Err(bad(format!("volume id {id} reused")));
        }
        if self.names.contains_key(name) {
            return Err(bad(format!("name {name:?} reused")));
        }
        check_name(name).map_err(bad)
    }

    fn insert_vol(&mut self, v: VolMeta) {
        self.next_vol_id = self.next_vol_id.max(v.id + 1);
        self.names.insert(v.name.clone(), v.id);
        self.vols.insert(v.id, v);
    }

    /// Indices of mapped chunks of the tree in `[from, to)`.
    pub(crate) fn collect_mapped(&self, root: u32, from: u32, to: u32, out: &mut Vec<u32>) {
        self.walk(root, 0, 0, &mut |idx, _e, _excl| {
            if idx >= from && idx < to {
                out.push(idx);
            }
        });
    }

    /// Calls `f(idx, entry, exclusive)` for every non-empty entry under `node`.
    fn walk(&self, node: u32, level: u32, base: u32, f: &mut dyn FnMut(u32, Entry, bool)) {
        self.walk_inner(node, level, base, true, f);
    }

    fn walk_inner(
        &self,
        node: u32,
        level: u32,
        base: u32,
        excl: bool,
        f: &mut dyn FnMut(u32, Entry, bool),
    ) {
        if node == 0 {
            return;
        }
        let n = self.node(node);
        let excl = excl && n.refs == 1;
        let shift = FANOUT_BITS * (DEPTH - 1 - level);
        match &n.body {
            Body::Internal(c) => {
                for (i, &child) in c.iter().enumerate() {
                    if child != 0 {
                        let b = base | ((i as u32) << shift);
                        self.walk_inner(child, level + 1, b, excl, f);
                    }
                }
            }
            Body::Leaf(e) => {
                for (i, en) in e.iter().enumerate() {
                    if !en.is_empty() {
                        f(base | i as u32, *en, excl && self.chunk_refs(en.phys) == 1);
                    }
                }
            }
        }
    }

    /// Space accounting of one volume: (chunks referenced, chunks referenced by it alone).
    pub(crate) fn accounting(&self, root: u32) -> (u64, u64) {
        let (mut alloc, mut unique) = (0u64, 0u64);
        self.walk_inner(root, 0, 0, true, &mut |_idx, e, excl| {
            alloc += 1;
            if excl {
                unique += 1;
            }
            if e.under != 0 {
                alloc += 1;
                // `under` is at least shared with whoever `phys` was copied from, unless that
                // one was deleted since.
                if excl && self.chunk_refs(e.under) == 1 {
                    unique += 1;
                }
            }
        });
        (alloc, unique)
    }

    /// Up to `limit` chunks of the tree at or after `from` that its volume does not hold
    /// alone: under a node another root also reaches, in a chunk another entry also names,
    /// or reading blocks from an `under` chunk that is shared. Subtrees before `from` are
    /// skipped.
    pub(crate) fn shared_entries(
        &self,
        root: u32,
        from: u32,
        limit: usize,
        out: &mut Vec<(u32, Entry)>,
    ) {
        self.shared_inner(root, 0, 0, true, from, limit, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn shared_inner(
        &self,
        node: u32,
        level: u32,
        base: u64,
        excl: bool,
        from: u32,
        limit: usize,
        out: &mut Vec<(u32, Entry)>,
    ) {
        if node == 0 || out.len() >= limit {
            return;
        }
        let n = self.node(node);
        let excl = excl && n.refs == 1;
        let shift = FANOUT_BITS * (DEPTH - 1 - level);
        match &n.body {
            Body::Internal(c) => {
                for (i, &child) in c.iter().enumerate() {
                    let b = base | ((i as u64) << shift);
                    if child == 0 || b + (1u64 << shift) <= from as u64 {
                        continue;
                    }
                    if out.len() >= limit {
                        return;
                    }
                    self.shared_inner(child, level + 1, b, excl, from, limit, out);
                }
            }
            Body::Leaf(e) => {
                for (i, en) in e.iter().enumerate() {
                    let b = base | i as u64;
                    if en.is_empty() || b < from as u64 {
                        continue;
                    }
                    let own = excl
                        && self.chunk_refs(en.phys) == 1
                        && (en.under == 0 || self.chunk_refs(en.under) == 1);
                    if !own {
                        if out.len() >= limit {
                            return;
                        }
                        out.push((b as u32, *en));
                    }
                }
            }
        }
    }

    /// Up to `limit` chunks at or after `from` where `dst` differs from `src`, with `src`'s
    /// entry. Subtrees shared by both are skipped, so the cost follows the differences.
    pub(crate) fn diff(
        &self,
        src: u32,
        dst: u32,
        from: u32,
        limit: usize,
        out: &mut Vec<(u32, Entry)>,
    ) {
        self.diff_inner(src, dst, 0, 0, from, limit, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn diff_inner(
        &self,
        src: u32,
        dst: u32,
        level: u32,
        base: u32,
        from: u32,
        limit: usize,
        out: &mut Vec<(u32, Entry)>,
    ) {
        if src == dst || out.len() >= limit {
            return;
        }
        if level == DEPTH - 1 {
            // Both leaves are looked up once and compared slot by slot.
            let (se, de) = (self.leaf(src), self.leaf(dst));
            for i in 0..FANOUT {
                let b = base as u64 | i as u64;
                if se[i] != de[i] && b >= from as u64 {
                    if out.len() >= limit {
                        return;
                    }
                    out.push((b as u32, se[i]));
                }
            }
            return;
        }
        let shift = FANOUT_BITS * (DEPTH - 1 - level);
        let span: u64 = 1u64 << shift;
        for i in 0..FANOUT {
            if out.len() >= limit {
                return;
            }
            let b = base as u64 | ((i as u64) << shift);
            if b + span <= from as u64 {
                continue;
            }
            let sc = self.child(src, i);
            let dc = self.child(dst, i);
            self.diff_inner(sc, dc, level + 1, b as u32, from, limit, out);
        }
    }

    fn child(&self, node: u32, i: usize) -> u32 {
        if node == 0 {
            return 0;
        }
        match &self.node(node).body {
            Body::Internal(c) => c[i],
            Body::Leaf(_) => 0,
        }
    }

    /// The entries of leaf `node` (all empty for node 0).
    fn leaf(&self, node: u32) -> &[Entry; FANOUT] {
        static EMPTY: [Entry; FANOUT] = [Entry::EMPTY; FANOUT];
        if node == 0 {
            return &EMPTY;
        }
        match &self.node(node).body {
            Body::Leaf(e) => e,
            Body::Internal(_) => &EMPTY,
        }
    }

    /// Replays one committed frame (releases take effect at its end).
    pub(crate) fn replay(&mut self, records: Vec<Record>) -> Res<()> {
        self.logging = false;
        let r = records.into_iter().try_for_each(|r| self.apply(r));
        self.logging = true;
        r
    }

    /// Number of live tree nodes (for tests, statistics and the fuzz target).
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len() - 1 - self.free_nodes.len()
    }
}

/// Names are 1..=255 bytes without control characters.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > crate::format::MAX_NAME {
        return Err("a name has 1 to 255 bytes".into());
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("a name has no control characters".into());
    }
    Ok(())
}

pub(crate) fn check_size(size: u64) -> Res<()> {
    if size == 0 || size % CHUNK_SIZE != 0 || size > MAX_VOLUME_SIZE {
        return Err(bad(format!(
            "size {size} is not a non-zero multiple of {CHUNK_SIZE} up to {MAX_VOLUME_SIZE}"
        )));
    }
    Ok(())
}

/// Sorted, de-duplicated chunk numbers as runs of consecutive chunks `(first, count)`.
fn runs(mut chunks: Vec<u32>) -> Vec<(u32, u32)> {
    chunks.sort_unstable();
    chunks.dedup();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for c in chunks {
        match out.last_mut() {
            Some((first, n)) if *first + *n == c => *n += 1,
            _ => out.push((c, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
