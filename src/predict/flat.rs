//! Tree ensembles compiled for scoring: built from [`Estimator::Trees`] when models are loaded,
//! never serialized. Both layouts walk the same comparisons and add the same leaves in the same
//! order as [`Estimator::predict`], so they give the same bits (tests hold them to it).
//!
//! - **Complete** (trees at most [`MAX_COMPLETE_DEPTH`] deep, features below [`ROW_FEATURES`],
//!   which is every tree `forewarn train` grows): each tree is padded to a complete tree of its
//!   own depth, its splits stored as a 1-based heap (children of `i` at `2i`, `2i + 1`), a
//!   leaf's output stored already multiplied by the learning rate. A walk is then `depth`
//!   steps of "load slot, load feature, compare, move" with no leaf test, no child index and no
//!   branch, compiled once per depth so that the steps are unrolled and the indexes need no
//!   bounds checks, eight trees in lockstep. A missing value (NaN) needs no test either: the row is
//!   prepared once per scoring ([`SplitRow`]) with every feature twice, NaN as −∞ where nodes
//!   that send missing values left read it and as +∞ where the others do, so `v <= threshold`
//!   alone goes the stored way. Padding below a shallow leaf leads to copies of that leaf, so
//!   whichever way those dummy splits go, the output is the leaf's.
//! - **Linked** (anything else): 16-byte nodes with an explicit left child (right = left + 1),
//!   the missing direction tested per node.

use super::{Estimator, Link, Tree, LEAF};
use std::cell::RefCell;

/// Features a [`SplitRow`] holds: the complete layout serves estimators that read features
/// below this index (the demo model reads 63).
pub const ROW_FEATURES: usize = 256;
/// The deepest tree the complete layout pads (2⁸ leaves a tree at most; `forewarn train` grows
/// depth 5). Deeper trees are walked in the linked layout.
pub const MAX_COMPLETE_DEPTH: u32 = 8;
/// Trees walked in lockstep, so that their loads overlap. (Four lanes of complete trees take
/// 8 % fewer instructions than eight, none spilled to the stack, but were 1.8× slower: the
/// compiler then lays the four walks out one after the other.)
const LANES: usize = 8;
const ROW_SLOTS: usize = 2 * ROW_FEATURES;

/// A feature row as the complete layout reads it: slot `f` holds feature `f` with NaN as −∞,
/// slot `ROW_FEATURES + f` the same with NaN as +∞. Features beyond the row read as missing.
#[derive(Debug, Clone)]
pub struct SplitRow {
    v: Box<[f64; ROW_SLOTS]>,
    /// Features set by the latest [`SplitRow::set`]; slots beyond hold the missing pattern.
    len: usize,
}

impl Default for SplitRow {
    fn default() -> Self {
        SplitRow::new()
    }
}

impl SplitRow {
    pub fn new() -> SplitRow {
        let mut v = Box::new([f64::NEG_INFINITY; ROW_SLOTS]);
        v[ROW_FEATURES..].fill(f64::INFINITY);
        SplitRow { v, len: 0 }
    }

    /// Prepares the row `x` (features from `ROW_FEATURES` on are not kept: no complete tree
    /// reads them).
    pub fn set(&mut self, x: &[f64]) {
        let n = x.len().min(ROW_FEATURES);
        let (low, high) = self.v.split_at_mut(ROW_FEATURES);
        for ((l, h), &v) in low.iter_mut().zip(high.iter_mut()).zip(x.iter().take(n)) {
            let missing = v.is_nan();
            *l = if missing { f64::NEG_INFINITY } else { v };
            *h = if missing { f64::INFINITY } else { v };
        }
        if self.len > n {
            low[n..self.len].fill(f64::NEG_INFINITY);
            high[n..self.len].fill(f64::INFINITY);
        }
        self.len = n;
    }

    #[inline(always)]
    fn at(&self, slot: u16) -> f64 {
        // The mask is a no-op for the slots compiled (all below ROW_SLOTS); it lets the
        // compiler drop the bounds check.
        self.v[usize::from(slot) & (ROW_SLOTS - 1)]
    }
}

thread_local! {
    /// One prepared row per scoring thread, reused: preparing writes only the row's features.
    static ROW: RefCell<SplitRow> = RefCell::new(SplitRow::new());
}

/// Runs `f` with `x` prepared as a [`SplitRow`] (the thread's own, reused).
pub(super) fn with_row<R>(x: &[f64], f: impl FnOnce(&SplitRow) -> R) -> R {
    ROW.with(|cell| match cell.try_borrow_mut() {
        Ok(mut row) => {
            row.set(x);
            f(&row)
        }
        // Only a scoring from inside a scoring could find it taken: give it its own.
        Err(_) => {
            let mut row = SplitRow::new();
            row.set(x);
            f(&row)
        }
    })
}

/// A tree ensemble compiled for scoring (see the module documentation).
#[derive(Debug, Clone)]
pub struct FlatTrees {
    base: f64,
    link: Link,
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    Complete(Complete),
    Linked(Linked),
}

/// Trees padded to complete trees. A tree of depth `d` takes `2^d` entries in each array: its
/// splits as a 1-based heap (entry 0 unused, the children of `i` at `2i` and `2i + 1`), so that
/// a walk is `i = 2i + (v > threshold)` from 1 and ends on `2^d + leaf`; its leaves left to
/// right. Both fit one `[_; 2^d]`, which lets the walk index them without bounds checks.
#[derive(Debug, Clone)]
struct Complete {
    /// Runs of consecutive trees of one depth, in tree order.
    groups: Vec<Group>,
    /// Every tree's split thresholds, tree after tree.
    thresholds: Vec<f64>,
    /// The [`SplitRow`] slot each split reads: the feature, plus `ROW_FEATURES` when missing
    /// goes right.
    slots: Vec<u16>,
    /// Every tree's leaves (output × learning rate), tree after tree, left to right.
    leaves: Vec<f64>,
    /// For evidence ([`FlatTrees::contributions`]): every tree's stored node values (an inner
    /// node's mean output below, a leaf's output) at their heap places, `2 × 2^depth` entries
    /// a tree (entry 0 and the places under a shallow leaf unused, the bottom places
    /// `2^depth` on).
    means: Vec<f64>,
    learning_rate: f64,
}

/// Consecutive trees of one depth.
#[derive(Debug, Clone, Copy)]
struct Group {
    depth: u32,
    trees: u32,
    /// Where the group's first tree starts in the three arrays.
    start: u32,
}

/// What [`fill`] writes a complete tree into: its `2^depth` entries of each array (`means`:
/// twice that).
struct TreeOut<'a> {
    thresholds: &'a mut [f64],
    slots: &'a mut [u16],
    leaves: &'a mut [f64],
    means: &'a mut [f64],
}

/// The slot of a place that is not a stored split (a shallow leaf, or below one). Walks for a
/// score read it like any slot (masked, it is a real slot; every way leads to the same leaf);
/// the walk for evidence stops there.
const NOT_A_SPLIT: u16 = u16::MAX;

/// Trees as linked 16-byte nodes, all in one array, breadth-first, the two children of a node
/// side by side.
#[derive(Debug, Clone)]
struct Linked {
    learning_rate: f64,
    roots: Vec<u32>,
    nodes: Vec<FlatNode>,
}

#[derive(Debug, Clone, Copy)]
struct FlatNode {
    /// The threshold of an inner node, the output of a leaf.
    value: f64,
    /// Feature index, with the leaf and missing-goes-left flags in the top bits.
    meta: u32,
    /// Index of the left child; the right child follows it.
    left: u32,
}

const FLAT_LEAF: u32 = 1 << 31;
const FLAT_MISSING_LEFT: u32 = 1 << 30;
const FLAT_FEATURE: u32 = FLAT_MISSING_LEFT - 1;

impl FlatNode {
    const EMPTY: FlatNode = FlatNode {
        value: 0.0,
        meta: FLAT_LEAF,
        left: 0,
    };

    #[inline(always)]
    fn is_leaf(&self) -> bool {
        self.meta & FLAT_LEAF != 0
    }

    /// The child `x` goes to: exactly `Tree::predict`'s test.
    #[inline(always)]
    fn next(&self, x: &[f64]) -> usize {
        let v = x[(self.meta & FLAT_FEATURE) as usize];
        let left = if v.is_nan() {
            self.meta & FLAT_MISSING_LEFT != 0
        } else {
            v <= self.value
        };
        self.left as usize + usize::from(!left)
    }
}

impl FlatTrees {
    /// Compiles a tree ensemble; `None` for a linear model, or for trees that are not plain
    /// trees (a node reached twice), which are then walked as stored.
    pub fn compile(e: &Estimator) -> Option<FlatTrees> {
        let Estimator::Trees {
            base,
            learning_rate,
            trees,
            link,
        } = e
        else {
            return None;
        };
        let layout = match Complete::compile(trees, *learning_rate) {
            Some(c) => Layout::Complete(c),
            None => Layout::Linked(Linked::compile(trees, *learning_rate)?),
        };
        Some(FlatTrees {
            base: *base,
            link: *link,
            layout,
        })
    }

    /// Whether the trees were compiled into the complete layout (which reads a [`SplitRow`]).
    pub fn is_complete(&self) -> bool {
        matches!(self.layout, Layout::Complete(_))
    }

    /// Same as [`Estimator::predict`] on the estimator this was compiled from.
    pub fn predict(&self, x: &[f64]) -> f64 {
        let z = match &self.layout {
            Layout::Complete(c) => with_row(x, |row| c.sum(self.base, row)),
            Layout::Linked(l) => l.sum(self.base, x),
        };
        self.link.apply(z)
    }

    /// [`FlatTrees::predict`] with `row` already prepared from `x` ([`SplitRow::set`]): one
    /// preparation serves every estimator scoring the same row.
    pub fn predict_prepared(&self, x: &[f64], row: &SplitRow) -> f64 {
        let z = match &self.layout {
            Layout::Complete(c) => c.sum(self.base, row),
            Layout::Linked(l) => l.sum(self.base, x),
        };
        self.link.apply(z)
    }

    /// [`Estimator::contributions`] of the estimator this was compiled from, the same bits
    /// (the same additions in the same order), walking the complete layout, whose splits the
    /// scoring has just read; `None` for the linked layout.
    pub fn contributions(&self, x: &[f64], n_features: usize) -> Option<Vec<f64>> {
        let Layout::Complete(c) = &self.layout else {
            return None;
        };
        let mut out = vec![0.0; n_features];
        with_row(x, |row| c.contributions(row, &mut out));
        Some(out)
    }
}

impl Complete {
    /// Adds, for every split on each tree's path, the learning rate × (the value of the child
    /// taken − the split's value) to its feature's entry of `c` (features beyond `c` apart), in
    /// tree order and path order: exactly the stored walk's additions.
    fn contributions(&self, row: &SplitRow, c: &mut [f64]) {
        for g in &self.groups {
            let w = 1usize << g.depth;
            for k in 0..g.trees as usize {
                let s0 = g.start as usize + k * w;
                let (Some(th), Some(sl), Some(means)) = (
                    self.thresholds.get(s0..s0 + w),
                    self.slots.get(s0..s0 + w),
                    self.means.get(2 * s0..2 * s0 + 2 * w),
                ) else {
                    return;
                };
                let mut a = 1usize;
                while a < w {
                    let slot = sl[a];
                    if slot == NOT_A_SPLIT {
                        break;
                    }
                    let next = 2 * a + usize::from(row.at(slot) > th[a]);
                    let feature = usize::from(slot) % ROW_FEATURES;
                    if let Some(e) = c.get_mut(feature) {
                        *e += self.learning_rate * (means[next] - means[a]);
                    }
                    a = next;
                }
            }
        }
    }

    fn compile(trees: &[Tree], learning_rate: f64) -> Option<Complete> {
        let mut out = Complete {
            groups: Vec::new(),
            thresholds: Vec::new(),
            slots: Vec::new(),
            leaves: Vec::new(),
            means: Vec::new(),
            learning_rate,
        };
        for t in trees {
            let depth = complete_depth(t)?;
            let start = u32::try_from(out.leaves.len()).ok()?;
            match out.groups.last_mut() {
                Some(g) if g.depth == depth => g.trees += 1,
                _ => out.groups.push(Group {
                    depth,
                    trees: 1,
                    start,
                }),
            }
            let width = 1usize << depth;
            let s0 = out.leaves.len();
            // Entries below a shallow leaf are never read as splits: any values do.
            out.thresholds.resize(s0 + width, 0.0);
            out.slots.resize(s0 + width, NOT_A_SPLIT);
            out.leaves.resize(s0 + width, 0.0);
            out.means.resize(2 * (s0 + width), 0.0);
            let at = Place {
                node: 0,
                heap: 1,
                below: depth,
            };
            let mut tree = TreeOut {
                thresholds: &mut out.thresholds[s0..],
                slots: &mut out.slots[s0..],
                leaves: &mut out.leaves[s0..],
                means: &mut out.means[2 * s0..],
            };
            fill(t, at, learning_rate, &mut tree)?;
        }
        u32::try_from(out.leaves.len()).ok()?;
        Some(out)
    }

    /// `base` plus every tree's leaf for `row`, in tree order.
    #[inline]
    fn sum(&self, base: f64, row: &SplitRow) -> f64 {
        let mut z = base;
        for g in &self.groups {
            // One walk compiled per depth, its loop unrolled and its indexes masked.
            z = match g.depth {
                0 => self.walk::<1>(g, row, z),
                1 => self.walk::<2>(g, row, z),
                2 => self.walk::<4>(g, row, z),
                3 => self.walk::<8>(g, row, z),
                4 => self.walk::<16>(g, row, z),
                5 => self.walk::<32>(g, row, z),
                6 => self.walk::<64>(g, row, z),
                7 => self.walk::<128>(g, row, z),
                // `compile` keeps every depth at most MAX_COMPLETE_DEPTH (8).
                _ => self.walk::<256>(g, row, z),
            };
        }
        z
    }

    /// Walks the trees of group `g` (`W = 2^depth` entries each) and adds their leaves to `z`
    /// in tree order, [`LANES`] trees in lockstep so that their loads overlap.
    #[inline(always)]
    fn walk<const W: usize>(&self, g: &Group, row: &SplitRow, mut z: f64) -> f64 {
        let start = g.start as usize;
        let end = start + g.trees as usize * W;
        let (Some(th), Some(sl), Some(le)) = (
            self.thresholds.get(start..end),
            self.slots.get(start..end),
            self.leaves.get(start..end),
        ) else {
            // `compile` laid every group out within the arrays.
            return f64::NAN;
        };
        let mut th = th.chunks_exact(LANES * W);
        let mut sl = sl.chunks_exact(LANES * W);
        let mut le = le.chunks_exact(LANES * W);
        for ((t, s), l) in (&mut th).zip(&mut sl).zip(&mut le) {
            z = walk_trees::<W, LANES>(t, s, l, row, z);
        }
        let rest = th
            .remainder()
            .chunks_exact(W)
            .zip(sl.remainder().chunks_exact(W))
            .zip(le.remainder().chunks_exact(W));
        for ((t, s), l) in rest {
            z = walk_trees::<W, 1>(t, s, l, row, z);
        }
        z
    }
}

/// Walks `N` complete trees of `W = 2^depth` entries each (`thresholds`, `slots` and `leaves`
/// hold exactly theirs) in lockstep and adds their leaves to `z` in order.
#[inline(always)]
fn walk_trees<const W: usize, const N: usize>(
    thresholds: &[f64],
    slots: &[u16],
    leaves: &[f64],
    row: &SplitRow,
    mut z: f64,
) -> f64 {
    if thresholds.len() != N * W || slots.len() != N * W || leaves.len() != N * W {
        return f64::NAN;
    }
    let mut at = [1usize; N];
    for _ in 0..W.trailing_zeros() {
        for (k, a) in at.iter_mut().enumerate() {
            // `a` is below W until the last step: the mask changes nothing but lets the
            // compiler drop the bounds checks.
            let i = k * W + (*a & (W - 1));
            let v = row.at(slots[i]);
            // Neither is NaN (the row holds ±∞ instead, thresholds are checked), so
            // `v > threshold` is exactly "not `v <= threshold`": the stored test.
            *a = 2 * *a + usize::from(v > thresholds[i]);
        }
    }
    // After `depth` steps `a` is `W + leaf`.
    for (k, a) in at.iter().enumerate() {
        z += leaves[k * W + (*a & (W - 1))];
    }
    z
}

/// Where [`fill`] is: a stored node, its place in the complete tree (1-based heap), the levels
/// below it.
#[derive(Clone, Copy)]
struct Place {
    node: usize,
    heap: usize,
    below: u32,
}

/// Writes the stored subtree at `at.node` into the complete tree at `at.heap`: its splits, and
/// for a leaf its output × `learning_rate` into every bottom place under it.
fn fill(t: &Tree, at: Place, learning_rate: f64, out: &mut TreeOut<'_>) -> Option<()> {
    let n = t.nodes.get(at.node)?;
    *out.means.get_mut(at.heap)? = n.value;
    if n.feature == LEAF {
        // The bottom places under heap node h, `below` levels down, are h·2^below onwards;
        // a leaf's number is its bottom place less the tree's width.
        let width = out.leaves.len();
        let first = (at.heap << at.below).checked_sub(width)?;
        out.leaves
            .get_mut(first..first + (1usize << at.below))?
            .fill(learning_rate * n.value);
        return Some(());
    }
    let feature = n.feature as usize;
    let slot = if n.missing_left {
        feature
    } else {
        ROW_FEATURES + feature
    };
    *out.thresholds.get_mut(at.heap)? = n.threshold;
    *out.slots.get_mut(at.heap)? = u16::try_from(slot).ok()?;
    let below = at.below.checked_sub(1)?;
    for (child, heap) in [(n.left, 2 * at.heap), (n.right, 2 * at.heap + 1)] {
        let next = Place {
            node: child as usize,
            heap,
            below,
        };
        fill(t, next, learning_rate, out)?;
    }
    Some(())
}

/// The depth of `t` if it fits the complete layout: a plain tree (no node reached twice) at
/// most [`MAX_COMPLETE_DEPTH`] deep, reading features below [`ROW_FEATURES`], whose thresholds
/// send ±∞ the way the stored test sends NaN (not NaN; not +∞ where missing goes right).
fn complete_depth(t: &Tree) -> Option<u32> {
    let mut seen = vec![false; t.nodes.len()];
    let mut stack = vec![(0usize, 0u32)];
    let mut depth = 0;
    while let Some((i, d)) = stack.pop() {
        if std::mem::replace(seen.get_mut(i)?, true) || d > MAX_COMPLETE_DEPTH {
            return None;
        }
        depth = depth.max(d);
        let n = &t.nodes[i];
        if n.feature == LEAF {
            continue;
        }
        let sends_missing_right = !n.missing_left;
        if n.feature as usize >= ROW_FEATURES
            || n.threshold.is_nan()
            || (sends_missing_right && n.threshold == f64::INFINITY)
        {
            return None;
        }
        stack.push((n.left as usize, d + 1));
        stack.push((n.right as usize, d + 1));
    }
    Some(depth)
}

impl Linked {
    fn compile(trees: &[Tree], learning_rate: f64) -> Option<Linked> {
        let mut nodes = Vec::with_capacity(trees.iter().map(|t| t.nodes.len()).sum());
        let mut roots = Vec::with_capacity(trees.len());
        for t in trees {
            roots.push(u32::try_from(nodes.len()).ok()?);
            Self::compile_tree(t, &mut nodes)?;
        }
        Some(Linked {
            learning_rate,
            roots,
            nodes,
        })
    }

    fn compile_tree(t: &Tree, out: &mut Vec<FlatNode>) -> Option<()> {
        let mut seen = vec![false; t.nodes.len()];
        let mut queue = std::collections::VecDeque::new();
        *seen.first_mut()? = true;
        queue.push_back((0usize, out.len()));
        out.push(FlatNode::EMPTY);
        while let Some((orig, at)) = queue.pop_front() {
            let n = t.nodes.get(orig)?;
            if n.feature == LEAF {
                out[at] = FlatNode {
                    value: n.value,
                    meta: FLAT_LEAF,
                    left: 0,
                };
                continue;
            }
            if n.feature > FLAT_FEATURE {
                return None;
            }
            let left = out.len();
            out.push(FlatNode::EMPTY);
            out.push(FlatNode::EMPTY);
            for (child, slot) in [(n.left, left), (n.right, left + 1)] {
                let c = child as usize;
                if std::mem::replace(seen.get_mut(c)?, true) {
                    return None;
                }
                queue.push_back((c, slot));
            }
            out[at] = FlatNode {
                value: n.threshold,
                meta: n.feature | if n.missing_left { FLAT_MISSING_LEFT } else { 0 },
                left: u32::try_from(left).ok()?,
            };
        }
        Some(())
    }

    fn leaf(&self, mut i: usize, x: &[f64]) -> f64 {
        loop {
            let n = &self.nodes[i];
            if n.is_leaf() {
                return n.value;
            }
            i = n.next(x);
        }
    }

    fn sum(&self, base: f64, x: &[f64]) -> f64 {
        let mut z = base;
        // Eight trees walked in lockstep so their node loads overlap; their leaves are then
        // added one by one in tree order, as the stored walker adds them.
        let mut chunks = self.roots.chunks_exact(LANES);
        for c in &mut chunks {
            let mut at = [0usize; LANES];
            for (a, &r) in at.iter_mut().zip(c) {
                *a = r as usize;
            }
            loop {
                let mut walking = false;
                for a in &mut at {
                    let n = &self.nodes[*a];
                    if !n.is_leaf() {
                        *a = n.next(x);
                        walking = true;
                    }
                }
                if !walking {
                    break;
                }
            }
            for a in at {
                z += self.learning_rate * self.nodes[a].value;
            }
        }
        for &r in chunks.remainder() {
            z += self.learning_rate * self.leaf(r as usize, x);
        }
        z
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Artifact, Node};
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The plainest walk of the stored trees: the definition the compiled layouts must meet.
    fn reference(e: &Estimator, x: &[f64]) -> f64 {
        let Estimator::Trees {
            base,
            learning_rate,
            trees,
            link,
        } = e
        else {
            panic!("not trees")
        };
        let mut z = *base;
        for t in trees {
            let mut n = &t.nodes[0];
            while n.feature != LEAF {
                let v = x[n.feature as usize];
                let left = if v.is_nan() {
                    n.missing_left
                } else {
                    v <= n.threshold
                };
                n = &t.nodes[if left { n.left } else { n.right } as usize];
            }
            z += learning_rate * n.value;
        }
        link.apply(z)
    }

    /// Rows that reach every side of every split: a feature is missing, ±∞, exactly one of the
    /// thresholds it is split at, just beside one, or anywhere in their range.
    fn rows(e: &[&Estimator], width: usize, n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut cuts = vec![Vec::new(); width];
        for e in e {
            if let Estimator::Trees { trees, .. } = e {
                for node in trees.iter().flat_map(|t| &t.nodes) {
                    if node.feature != LEAF && node.threshold.is_finite() {
                        cuts[node.feature as usize].push(node.threshold);
                    }
                }
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                (0..width)
                    .map(|f| {
                        let c = &cuts[f];
                        let cut = if c.is_empty() {
                            0.0
                        } else {
                            c[rng.random_range(0..c.len())]
                        };
                        match rng.random_range(0..20) {
                            0..=2 => f64::NAN,
                            3 => f64::INFINITY,
                            4 => f64::NEG_INFINITY,
                            5..=8 => cut,
                            9 => cut.next_up(),
                            10 => cut.next_down(),
                            _ => cut * rng.random_range(-2.0..2.0),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn assert_same_bits(e: &Estimator, rows: &[Vec<f64>]) -> FlatTrees {
        let flat = FlatTrees::compile(e).expect("compiles");
        let mut row = SplitRow::new();
        for x in rows {
            let want = reference(e, x).to_bits();
            assert_eq!(e.predict(x).to_bits(), want, "stored walk, {x:?}");
            assert_eq!(flat.predict(x).to_bits(), want, "compiled, {x:?}");
            row.set(x);
            assert_eq!(flat.predict_prepared(x, &row).to_bits(), want, "{x:?}");
            // Evidence: the complete layout's walk adds what the stored walk adds, bit for
            // bit, for every feature, and leaves out the features beyond the count asked.
            for n in [x.len(), x.len() / 2] {
                let stored: Vec<u64> = e.contributions(x, n).iter().map(|v| v.to_bits()).collect();
                match flat.contributions(x, n) {
                    Some(c) => {
                        let c: Vec<u64> = c.iter().map(|v| v.to_bits()).collect();
                        assert_eq!(c, stored, "contributions of {n} features, {x:?}");
                    }
                    None => assert!(!flat.is_complete(), "a complete layout walks for evidence"),
                }
            }
        }
        flat
    }

    #[test]
    fn the_demo_models_compiled_trees_give_the_reference_walks_bits() {
        let demo = include_str!("../../models/demo.json");
        let a = Artifact::from_json(demo, std::path::Path::new("demo.json"))
            .expect("the demo model loads");
        let width = a.features.len();
        for (k, m) in a.modes.iter().enumerate() {
            let estimators: Vec<&Estimator> =
                std::iter::once(&m.classifier).chain(&m.regressor).collect();
            let xs = rows(&estimators, width, 3_000, k as u64);
            for e in &estimators {
                assert!(assert_same_bits(e, &xs).is_complete(), "{}", m.mode);
            }
            // Through the mode's scoring, as the engine calls it.
            let c = super::super::CompiledMode::new(m);
            for x in &xs {
                let plain = a.score_mode(m, x);
                let fast = a.score_mode_compiled(m, &c, x);
                assert_eq!(plain.probability.to_bits(), fast.probability.to_bits());
                assert_eq!(
                    plain.ttf_hours.map(f64::to_bits),
                    fast.ttf_hours.map(f64::to_bits)
                );
            }
        }
    }

    /// A random tree: depth up to `max_depth`, leaves anywhere, either missing direction,
    /// thresholds that may be ±∞.
    fn random_tree(
        rng: &mut rand::rngs::StdRng,
        width: u32,
        max_depth: u32,
        any_inf: bool,
    ) -> Tree {
        type Rng = rand::rngs::StdRng;
        fn grow(rng: &mut Rng, nodes: &mut Vec<Node>, width: u32, left: u32, any_inf: bool) {
            let at = nodes.len();
            let value = rng.random_range(-3.0..3.0);
            nodes.push(Node {
                feature: LEAF,
                threshold: 0.0,
                left: 0,
                right: 0,
                value,
                missing_left: rng.random_bool(0.5),
            });
            if left == 0 || rng.random_bool(0.15) {
                return;
            }
            // +∞ where missing values go right only when asked for (see `complete_depth`).
            let inf_ok = any_inf || nodes[at].missing_left;
            let threshold = match rng.random_range(0..12) {
                0 if inf_ok => f64::INFINITY,
                1 => f64::NEG_INFINITY,
                _ => rng.random_range(-10.0..10.0),
            };
            let l = nodes.len() as u32;
            grow(rng, nodes, width, left - 1, any_inf);
            let r = nodes.len() as u32;
            grow(rng, nodes, width, left - 1, any_inf);
            let n = &mut nodes[at];
            n.feature = rng.random_range(0..width);
            n.threshold = threshold;
            n.left = l;
            n.right = r;
        }
        let mut nodes = Vec::new();
        grow(rng, &mut nodes, width, max_depth, any_inf);
        Tree { nodes }
    }

    fn tree_depth(t: &Tree) -> u32 {
        fn below(t: &Tree, i: usize) -> u32 {
            let n = &t.nodes[i];
            if n.feature == LEAF {
                0
            } else {
                1 + below(t, n.left as usize).max(below(t, n.right as usize))
            }
        }
        below(t, 0)
    }

    #[test]
    fn random_ensembles_score_the_reference_bits_in_either_layout() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // (trees, features, deepest, +∞ thresholds sending missing right): the complete layout,
        // then what sends an ensemble to the linked one (too deep; a feature beyond the split
        // row; a threshold the split row cannot meet).
        let cases = [
            (37, 12, 6, false),
            (8, 5, 0, false),
            (3, 40, 8, false),
            (21, 12, 11, false),
            (17, 300, 4, false),
            (40, 6, 5, true),
        ];
        for (i, (n, width, depth, any_inf)) in cases.into_iter().enumerate() {
            let trees: Vec<Tree> = (0..n)
                .map(|_| random_tree(&mut rng, width, depth, any_inf))
                .collect();
            let e = Estimator::Trees {
                base: rng.random_range(-1.0..1.0),
                learning_rate: 0.1,
                trees,
                link: if i % 2 == 0 {
                    Link::Logistic
                } else {
                    Link::Identity
                },
            };
            let xs = rows(&[&e], width as usize, 2_000, i as u64);
            let flat = assert_same_bits(&e, &xs);
            let Estimator::Trees { trees, .. } = &e else {
                unreachable!()
            };
            let deepest = trees.iter().map(tree_depth).max().unwrap_or(0);
            let inner = || {
                trees
                    .iter()
                    .flat_map(|t| &t.nodes)
                    .filter(|n| n.feature != LEAF)
            };
            let wide = inner().any(|n| n.feature as usize >= ROW_FEATURES);
            // A +∞ threshold that sends missing values right: the split row cannot meet it.
            let inf_right = inner().any(|n| !n.missing_left && n.threshold == f64::INFINITY);
            let complete = deepest <= MAX_COMPLETE_DEPTH && !wide && !inf_right;
            assert_eq!(flat.is_complete(), complete, "case {i}");
            if i < 3 {
                assert!(complete, "case {i} is for the complete layout");
            }
        }
    }

    #[test]
    fn a_shorter_row_reads_its_missing_features_as_missing() {
        let mut row = SplitRow::new();
        row.set(&[1.0, 2.0, f64::NAN]);
        row.set(&[5.0]);
        assert_eq!(row.at(0), 5.0);
        for f in [1u16, 2, 3] {
            assert_eq!(row.at(f), f64::NEG_INFINITY);
            assert_eq!(row.at(ROW_FEATURES as u16 + f), f64::INFINITY);
        }
    }
}
