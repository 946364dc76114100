//! The checkpoint: the whole metadata state encoded in one body, and decoded back with every
//! reference count rebuilt from the structure.

use std::collections::HashMap;

use super::{Body, DEPTH, Entry, FANOUT, Node, Res, State, VolMeta, bad, check_size};
use crate::format::{Dec, Enc, kind_from_u8, kind_to_u8};

impl State {
    /// Encodes the state (after every pending release was applied).
    pub(crate) fn encode_checkpoint(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u32(self.limit_chunks);
        e.u64(self.next_vol_id);
        // Nodes in post-order, numbered from 1 in the order written.
        let mut local: HashMap<u32, u32> = HashMap::new();
        let mut body = Enc::default();
        let mut count = 0u32;
        for v in self.vols.values() {
            self.encode_node(v.root, 0, &mut local, &mut body, &mut count);
        }
        e.u32(count);
        e.buf.extend_from_slice(&body.buf);
        e.u32(self.vols.len() as u32);
        for v in self.vols.values() {
            e.u64(v.id);
            e.u8(kind_to_u8(v.kind));
            e.u64(v.parent);
            e.u64(v.size);
            e.u64(v.created);
            e.u32(if v.root == 0 { 0 } else { local[&v.root] });
            e.str(&v.name);
        }
        e.buf
    }

    fn encode_node(
        &self,
        id: u32,
        level: u32,
        local: &mut HashMap<u32, u32>,
        out: &mut Enc,
        count: &mut u32,
    ) {
        if id == 0 || local.contains_key(&id) {
            return;
        }
        let n = self.node(id);
        if let Body::Internal(c) = &n.body {
            for &child in c.iter() {
                self.encode_node(child, level + 1, local, out, count);
            }
        }
        out.u8(level as u8);
        match &n.body {
            Body::Internal(c) => {
                out.u16(c.iter().filter(|&&c| c != 0).count() as u16);
                for (i, &child) in c.iter().enumerate().filter(|(_, c)| **c != 0) {
                    out.u8(i as u8);
                    out.u32(local[&child]);
                }
            }
            Body::Leaf(en) => {
                out.u16(en.iter().filter(|e| !e.is_empty()).count() as u16);
                for (i, e) in en.iter().enumerate().filter(|(_, e)| !e.is_empty()) {
                    out.u8(i as u8);
                    out.entry(e);
                }
            }
        }
        *count += 1;
        local.insert(id, *count);
    }

    /// Decodes a checkpoint. `chunk_bound` is the largest chunk number the data file can hold;
    /// it bounds the reference-count table (4 bytes per chunk of the data file).
    pub(crate) fn decode_checkpoint(buf: &[u8], chunk_bound: u32) -> Res<State> {
        let mut d = Dec::new(buf);
        let mut st = State::new(d.u32()?);
        st.chunk_bound = chunk_bound;
        st.next_vol_id = d.u64()?;
        let count = d.u32()? as usize;
        // Each node takes at least 3 bytes: never reserve more than the input can describe.
        let mut levels: Vec<u8> = Vec::with_capacity(count.min(d.remaining() / 3));
        st.nodes.reserve(count.min(d.remaining() / 3));
        for n in 0..count {
            let level = d.u8()?;
            if level as u32 >= DEPTH {
                return Err(d.err(format!("node level {level}")));
            }
            let slots = d.u16()? as usize;
            if slots > FANOUT {
                return Err(d.err(format!("node with {slots} slots")));
            }
            let mut body = Self::new_body(level as u32);
            let mut last: Option<u8> = None;
            for _ in 0..slots {
                let slot = d.u8()?;
                if last.is_some_and(|l| l >= slot) {
                    return Err(d.err("node slots out of order"));
                }
                last = Some(slot);
                match &mut body {
                    Body::Internal(c) => {
                        let child = d.u32()?;
                        if child == 0 || child as usize > n {
                            return Err(d.err(format!("node {} refers to node {child}", n + 1)));
                        }
                        if levels[child as usize - 1] != level + 1 {
                            return Err(d.err("child node at the wrong level"));
                        }
                        c[slot as usize] = child;
                    }
                    Body::Leaf(en) => {
                        let e = d.entry()?;
                        if e.phys > chunk_bound || e.under > chunk_bound {
                            return Err(d.err(format!("chunk {} beyond the data file", e.phys)));
                        }
                        en[slot as usize] = e;
                    }
                }
            }
            levels.push(level);
            st.nodes.push(Some(Node { refs: 0, body }));
        }
        let nvols = d.u32()? as usize;
        for _ in 0..nvols {
            let id = d.u64()?;
            let k = d.u8()?;
            let kind = kind_from_u8(k).ok_or_else(|| d.err(format!("bad volume kind {k}")))?;
            let parent = d.u64()?;
            let size = d.u64()?;
            let created = d.u64()?;
            let root = d.u32()?;
            let name = d.str()?;
            if root as usize > count || (root != 0 && levels[root as usize - 1] != 0) {
                return Err(d.err(format!("bad root {root}")));
            }
            check_size(size).map_err(|e| d.err(e.reason))?;
            st.check_new(id, &name).map_err(|e| d.err(e.reason))?;
            if id >= st.next_vol_id {
                return Err(d.err("volume id above the next id"));
            }
            st.insert_vol(VolMeta {
                id,
                name,
                size,
                root,
                kind,
                parent,
                created,
            });
        }
        if d.remaining() != 0 {
            return Err(d.err("trailing bytes"));
        }
        // Reference counts follow from the structure.
        let roots: Vec<u32> = st
            .vols
            .values()
            .map(|v| v.root)
            .filter(|&r| r != 0)
            .collect();
        for r in roots {
            st.node_mut(r).refs += 1;
        }
        for id in 1..st.nodes.len() {
            let children: Vec<u32> = match &st.node(id as u32).body {
                Body::Internal(c) => c.iter().copied().filter(|&c| c != 0).collect(),
                Body::Leaf(en) => {
                    let en: Vec<Entry> = en.iter().copied().filter(|e| !e.is_empty()).collect();
                    for e in en {
                        st.chunk_ref(e.phys);
                        if e.under != 0 {
                            st.chunk_ref(e.under);
                        }
                    }
                    Vec::new()
                }
            };
            for c in children {
                st.node_mut(c).refs += 1;
            }
        }
        // Nodes nothing refers to would leak: refuse them.
        if let Some(id) = (1..st.nodes.len()).find(|&i| st.node(i as u32).refs == 0) {
            return Err(bad(format!("node {id} is not referenced")));
        }
        st.rebuild_free_list();
        Ok(st)
    }
}
