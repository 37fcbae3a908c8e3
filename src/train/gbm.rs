//! Gradient-boosted regression trees on histogram-binned features, on linfa's `Fit`/`Predict`
//! traits (linfa has no gradient boosting).
//!
//! Each feature is cut into at most 255 bins at quantiles of the training rows (NaN gets a bin of
//! its own and is routed to whichever side gains more). Trees grow depth-first to `max_depth` with
//! second-order gains (squared error: hessian 1; logistic: p(1−p)), an L2 penalty on leaf values
//! and a minimum leaf size; each tree sees a seeded subsample of rows and features, and its output
//! is shrunk by the learning rate. With a validation set, boosting stops when the validation loss
//! has not improved for `patience` rounds and keeps the best prefix. The result is a
//! [`predict::Estimator::Trees`](crate::predict::Estimator), which the daemon scores as is.

use super::TrainError;
use crate::predict::{Estimator, Link, Node, Tree, LEAF};
use linfa::prelude::*;
use linfa::DatasetBase;
use ndarray::{Array1, Array2, ArrayView2};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const NAN_BIN: u8 = 255;
const BINS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    SquaredError,
    Logistic,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GbmParams {
    pub loss: Loss,
    pub max_rounds: usize,
    pub learning_rate: f64,
    pub max_depth: usize,
    pub min_leaf: usize,
    pub lambda: f64,
    pub subsample: f64,
    pub colsample: f64,
    /// Rounds without validation improvement before stopping.
    pub patience: usize,
    pub max_bins: usize,
    pub seed: u64,
}

impl GbmParams {
    pub fn new(loss: Loss) -> Self {
        GbmParams {
            loss,
            max_rounds: 500,
            learning_rate: 0.1,
            max_depth: 5,
            min_leaf: 20,
            lambda: 1.0,
            subsample: 0.5,
            colsample: 0.5,
            patience: 40,
            max_bins: 255,
            seed: 7,
        }
    }
}

/// A fitted ensemble and how many rounds it kept.
#[derive(Debug, Clone)]
pub struct Gbm {
    pub estimator: Estimator,
    pub rounds: usize,
    /// Validation loss per round, when a validation set was given.
    pub valid_loss: Vec<f64>,
}

impl Gbm {
    pub fn predict_row(&self, x: &[f64]) -> f64 {
        self.estimator.predict(x)
    }
}

/// Gradient sums of one bin. f32 keeps a node's histograms (features × 256 bins) small enough
/// to stay in cache, the main cost of training; totals are taken in f64.
#[derive(Clone, Copy, Default)]
struct Bin {
    g: f32,
    h: f32,
    n: f32,
}

/// Quantile cut points per feature; `v <= cuts[b]` ⇔ `bin(v) <= b`.
struct Binner {
    cuts: Vec<Vec<f64>>,
}

impl Binner {
    fn fit(x: ArrayView2<f64>, max_bins: usize) -> Binner {
        let max_cuts = max_bins.clamp(2, 255) - 1;
        let n = x.nrows();
        // Quantiles from at most 50k rows, evenly strided: enough for 255 bins.
        let stride = (n / 50_000).max(1);
        let cuts = (0..x.ncols())
            .map(|f| {
                let mut v: Vec<f64> = (0..n)
                    .step_by(stride)
                    .map(|r| x[[r, f]])
                    .filter(|v| v.is_finite())
                    .collect();
                // Values equal under `total_cmp` are the same bits, so an unstable sort gives
                // the same cuts.
                v.sort_unstable_by(f64::total_cmp);
                v.dedup();
                if v.len() <= 1 {
                    return Vec::new();
                }
                if v.len() <= max_cuts + 1 {
                    return v.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
                }
                let mut c: Vec<f64> = (1..=max_cuts)
                    .map(|q| v[q * v.len() / (max_cuts + 1)])
                    .collect();
                c.dedup();
                c
            })
            .collect();
        Binner { cuts }
    }

    /// Column-major bins.
    fn apply(&self, x: ArrayView2<f64>) -> Vec<u8> {
        let n = x.nrows();
        let mut out = vec![0u8; n * self.cuts.len()];
        for (f, cuts) in self.cuts.iter().enumerate() {
            let col = &mut out[f * n..(f + 1) * n];
            for r in 0..n {
                let v = x[[r, f]];
                col[r] = if v.is_nan() {
                    NAN_BIN
                } else {
                    cuts.partition_point(|c| *c < v) as u8
                };
            }
        }
        out
    }
}

/// Sums in f64, for gains.
#[derive(Clone, Copy, Default)]
struct Sum {
    g: f64,
    h: f64,
    n: f64,
}

impl Sum {
    fn add(&mut self, b: Bin) {
        self.g += b.g as f64;
        self.h += b.h as f64;
        self.n += b.n as f64;
    }
    fn of(b: Bin) -> Sum {
        let mut s = Sum::default();
        s.add(b);
        s
    }
}

struct Split {
    gain: f64,
    feature: usize,
    bin: usize,
    missing_left: bool,
}

struct Grower<'a> {
    p: &'a GbmParams,
    bins: &'a [u8],
    n_rows: usize,
    cuts: &'a [Vec<f64>],
    features: Vec<usize>,
    g: &'a [f64],
    h: &'a [f64],
    nodes: Vec<Node>,
    /// Per node of `nodes`, the bin of its split (`bin <= split` goes left): the tree walked on
    /// binned rows ([`BinnedTree`]).
    node_bins: Vec<u8>,
    scratch: Vec<u32>,
    threads: usize,
    /// Histograms of finished nodes, reused (zeroed) for the next ones instead of allocated.
    pool: Vec<Vec<Bin>>,
}

impl Grower<'_> {
    fn hist(&mut self, rows: &[u32]) -> Vec<Bin> {
        // Indexed by position in `self.features` (this tree's sample of features), not by id.
        let len = self.features.len() * BINS;
        let mut hist = match self.pool.pop() {
            Some(mut h) => {
                h.clear();
                h.resize(len, Bin::default());
                h
            }
            None => vec![Bin::default(); len],
        };
        let mut slots: Vec<(usize, &mut [Bin])> = self
            .features
            .iter()
            .copied()
            .zip(hist.chunks_mut(BINS))
            .collect();
        let fill = |slots: &mut [(usize, &mut [Bin])]| {
            for (f, hf) in slots.iter_mut() {
                let col = &self.bins[*f * self.n_rows..(*f + 1) * self.n_rows];
                for &r in rows {
                    let r = r as usize;
                    let b = &mut hf[col[r] as usize];
                    b.g += self.g[r] as f32;
                    b.h += self.h[r] as f32;
                    b.n += 1.0;
                }
            }
        };
        // Large nodes: split the features over the available cores (deterministic: each
        // feature's sums are accumulated by one thread in row order).
        if self.threads > 1 && rows.len() * slots.len() > 200_000 {
            let per = slots.len().div_ceil(self.threads);
            std::thread::scope(|s| {
                for chunk in slots.chunks_mut(per) {
                    s.spawn(|| fill(chunk));
                }
            });
        } else {
            fill(&mut slots);
        }
        hist
    }

    fn leaf_value(&self, g: f64, h: f64) -> f64 {
        -g / (h + self.p.lambda)
    }

    fn score(&self, g: f64, h: f64) -> f64 {
        g * g / (h + self.p.lambda)
    }

    fn best_split(&self, hist: &[Bin], tot: Sum) -> Option<Split> {
        let min_leaf = self.p.min_leaf.max(1) as f64;
        let parent = self.score(tot.g, tot.h);
        let mut best: Option<Split> = None;
        for (j, &f) in self.features.iter().enumerate() {
            let cuts = &self.cuts[f];
            if cuts.is_empty() {
                continue;
            }
            let hf = &hist[j * BINS..(j + 1) * BINS];
            let nan = Sum::of(hf[NAN_BIN as usize]);
            let mut acc = Sum::default();
            // Splitting after the last cut sends every finite value left and NaN right.
            let last = if nan.n > 0.0 {
                cuts.len()
            } else {
                cuts.len() - 1
            };
            for (b, bin) in hf.iter().enumerate().take(last.min(cuts.len()) + 1) {
                acc.add(*bin);
                if b == cuts.len() && nan.n == 0.0 {
                    break;
                }
                for missing_left in [false, true] {
                    let (lg, lh, ln) = if missing_left {
                        (acc.g + nan.g, acc.h + nan.h, acc.n + nan.n)
                    } else {
                        (acc.g, acc.h, acc.n)
                    };
                    let (rg, rh, rn) = (tot.g - lg, tot.h - lh, tot.n - ln);
                    if ln < min_leaf || rn < min_leaf || lh <= 1e-9 || rh <= 1e-9 {
                        continue;
                    }
                    let gain = self.score(lg, lh) + self.score(rg, rh) - parent;
                    if gain > best.as_ref().map_or(1e-9, |s| s.gain) {
                        best = Some(Split {
                            gain,
                            feature: f,
                            bin: b,
                            missing_left,
                        });
                    }
                    if nan.n == 0.0 {
                        break;
                    }
                }
            }
        }
        best
    }

    fn grow(&mut self, rows: &mut [u32], hist: Vec<Bin>, depth: usize) -> u32 {
        let tot = {
            let mut t = Sum::default();
            for b in &hist[..BINS] {
                t.add(*b);
            }
            t
        };
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            feature: LEAF,
            threshold: 0.0,
            left: 0,
            right: 0,
            value: self.leaf_value(tot.g, tot.h),
            missing_left: true,
        });
        self.node_bins.push(0);
        if depth >= self.p.max_depth || rows.len() < 2 * self.p.min_leaf.max(1) {
            self.pool.push(hist);
            return id;
        }
        let Some(split) = self.best_split(&hist, tot) else {
            self.pool.push(hist);
            return id;
        };
        // Stable partition: left rows first.
        let col = &self.bins[split.feature * self.n_rows..(split.feature + 1) * self.n_rows];
        let goes_left = |r: u32| {
            let b = col[r as usize];
            if b == NAN_BIN {
                split.missing_left
            } else {
                (b as usize) <= split.bin
            }
        };
        self.scratch.clear();
        let mut nl = 0;
        for i in 0..rows.len() {
            let r = rows[i];
            if goes_left(r) {
                rows[nl] = r;
                nl += 1;
            } else {
                self.scratch.push(r);
            }
        }
        rows[nl..].copy_from_slice(&self.scratch);
        let (left, right) = rows.split_at_mut(nl);
        // Build the smaller child's histogram; the larger one is the parent's minus it.
        let (small_hist, mut big_hist) = if left.len() <= right.len() {
            (self.hist(left), hist)
        } else {
            (self.hist(right), hist)
        };
        for (b, s) in big_hist.iter_mut().zip(&small_hist) {
            b.g -= s.g;
            b.h -= s.h;
            b.n -= s.n;
        }
        let (lh, rh) = if left.len() <= right.len() {
            (small_hist, big_hist)
        } else {
            (big_hist, small_hist)
        };
        let l = self.grow(left, lh, depth + 1);
        let r = self.grow(right, rh, depth + 1);
        let cuts = &self.cuts[split.feature];
        let n = &mut self.nodes[id as usize];
        n.feature = split.feature as u32;
        n.threshold = cuts.get(split.bin).copied().unwrap_or(f64::MAX);
        n.left = l;
        n.right = r;
        n.missing_left = split.missing_left;
        // At most the number of cuts (254): a u8.
        self.node_bins[id as usize] = split.bin as u8;
        id
    }
}

/// A tree as grown, walked on the binned rows it was grown on: `v <= cuts[b]` exactly when
/// `bin(v) <= b`, and a split after the last cut (threshold `f64::MAX`) sends every finite value
/// left, so each row reaches the leaf the stored tree gives it, at the cost of a byte per node
/// instead of a feature value from a wide row. Not for rows holding +∞, which the stored tree
/// sends right of such a split and the bins left.
struct BinnedTree<'a> {
    nodes: &'a [Node],
    bins: &'a [u8],
}

impl BinnedTree<'_> {
    /// The leaf value of row `r` of the column-major `bins` of `n_rows` rows.
    fn predict(&self, bins: &[u8], n_rows: usize, r: usize) -> f64 {
        let mut i = 0usize;
        loop {
            let n = &self.nodes[i];
            if n.feature == LEAF {
                return n.value;
            }
            let b = bins[n.feature as usize * n_rows + r];
            let left = if b == NAN_BIN {
                n.missing_left
            } else {
                b <= self.bins[i]
            };
            i = if left { n.left } else { n.right } as usize;
        }
    }
}

/// Whether the binned walk gives every row of `x` its stored tree's leaf (no +∞ anywhere).
fn binned_walk_is_exact(x: &ArrayView2<f64>) -> bool {
    !x.iter().any(|v| *v == f64::INFINITY)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Row `r` as a slice: borrowed when the matrix is in standard layout, else copied into `buf`.
fn row_of<'a>(x: &'a ArrayView2<'_, f64>, r: usize, buf: &'a mut Vec<f64>) -> &'a [f64] {
    let row = x.row(r);
    match row.to_slice() {
        Some(s) => s,
        None => {
            buf.clear();
            buf.extend(row.iter().copied());
            buf
        }
    }
}

impl GbmParams {
    /// Fits on `train`, stopping early on `valid` when given. Sample weights come from the
    /// dataset's weights (class balancing).
    pub fn fit_with_validation(
        &self,
        train: &DatasetBase<Array2<f64>, Array1<f64>>,
        valid: Option<&DatasetBase<Array2<f64>, Array1<f64>>>,
    ) -> Result<Gbm, TrainError> {
        let x = train.records().view();
        let y = train.targets();
        let n = x.nrows();
        if n == 0 || x.ncols() == 0 {
            return Err(TrainError::Data("no training rows or no features".into()));
        }
        let w: Vec<f64> = if train.weights().is_some_and(|w| w.len() == n) {
            train
                .weights()
                .unwrap_or(&[])
                .iter()
                .map(|&v| v as f64)
                .collect()
        } else {
            vec![1.0; n]
        };
        let wsum: f64 = w.iter().sum();
        let base = match self.loss {
            Loss::SquaredError => y.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / wsum,
            Loss::Logistic => {
                let p = (y.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / wsum)
                    .clamp(1e-6, 1.0 - 1e-6);
                (p / (1.0 - p)).ln()
            }
        };
        let link = match self.loss {
            Loss::SquaredError => Link::Identity,
            Loss::Logistic => Link::Logistic,
        };
        let binner = Binner::fit(x, self.max_bins);
        let bins = binner.apply(x);
        // Each round adds the new tree to every row's prediction: walked on the bins (a byte per
        // node, column by column) instead of the rows' values, the same leaves (see
        // [`BinnedTree`]); validation rows are binned once with the training cuts.
        let binned = binned_walk_is_exact(&x);
        let vbins: Option<Vec<u8>> = valid
            .map(|v| v.records().view())
            .filter(|vx| binned && binned_walk_is_exact(vx))
            .map(|vx| binner.apply(vx));
        let nf = x.ncols();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut pred = vec![base; n];
        let mut g = vec![0.0; n];
        let mut h = vec![0.0; n];
        let mut trees: Vec<Tree> = Vec::new();
        let mut vpred: Vec<f64> = valid.map_or(Vec::new(), |v| vec![base; v.records().nrows()]);
        let mut valid_loss = Vec::new();
        let (mut best_loss, mut best_rounds) = (f64::INFINITY, 0usize);
        let mut buf = Vec::with_capacity(nf);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let usable: Vec<usize> = (0..nf).filter(|&f| !binner.cuts[f].is_empty()).collect();
        let mut pool: Vec<Vec<Bin>> = Vec::new();
        if usable.is_empty() {
            return Ok(Gbm {
                estimator: Estimator::Trees {
                    base,
                    learning_rate: self.learning_rate,
                    trees,
                    link,
                },
                rounds: 0,
                valid_loss,
            });
        }
        for round in 0..self.max_rounds {
            for i in 0..n {
                let (gi, hi) = match self.loss {
                    Loss::SquaredError => (pred[i] - y[i], 1.0),
                    Loss::Logistic => {
                        let p = sigmoid(pred[i]);
                        (p - y[i], (p * (1.0 - p)).max(1e-6))
                    }
                };
                g[i] = w[i] * gi;
                h[i] = w[i] * hi;
            }
            let mut rows: Vec<u32> = (0..n as u32)
                .filter(|_| self.subsample >= 1.0 || rng.random::<f64>() < self.subsample)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut features = usable.clone();
            if self.colsample < 1.0 {
                features.shuffle(&mut rng);
                let k = ((usable.len() as f64 * self.colsample).ceil() as usize).max(1);
                features.truncate(k);
                features.sort_unstable();
            }
            let mut grower = Grower {
                p: self,
                bins: &bins,
                n_rows: n,
                cuts: &binner.cuts,
                features,
                g: &g,
                h: &h,
                nodes: Vec::new(),
                node_bins: Vec::new(),
                scratch: Vec::new(),
                threads,
                pool: std::mem::take(&mut pool),
            };
            let root_hist = grower.hist(&rows);
            grower.grow(&mut rows, root_hist, 0);
            pool = grower.pool;
            let node_bins = grower.node_bins;
            let tree = Tree {
                nodes: grower.nodes,
            };
            let walk = BinnedTree {
                nodes: &tree.nodes,
                bins: &node_bins,
            };
            if binned {
                for (i, p) in pred.iter_mut().enumerate() {
                    *p += self.learning_rate * walk.predict(&bins, n, i);
                }
            } else {
                for (i, p) in pred.iter_mut().enumerate() {
                    *p += self.learning_rate * tree.predict(row_of(&x, i, &mut buf));
                }
            }
            if let Some(v) = valid {
                let vx = v.records().view();
                let vy = v.targets();
                let vw = v.weights();
                let vn = vx.nrows();
                let mut loss = 0.0;
                let mut wtot = 0.0;
                for (i, p) in vpred.iter_mut().enumerate() {
                    *p += self.learning_rate
                        * match &vbins {
                            Some(vb) => walk.predict(vb, vn, i),
                            None => tree.predict(row_of(&vx, i, &mut buf)),
                        };
                    let wi = vw.and_then(|w| w.get(i)).map_or(1.0, |&w| w as f64);
                    loss += wi
                        * match self.loss {
                            Loss::SquaredError => (*p - vy[i]).powi(2),
                            Loss::Logistic => {
                                let q = sigmoid(*p).clamp(1e-12, 1.0 - 1e-12);
                                -(vy[i] * q.ln() + (1.0 - vy[i]) * (1.0 - q).ln())
                            }
                        };
                    wtot += wi;
                }
                let loss = loss / wtot.max(1e-12);
                valid_loss.push(loss);
                trees.push(tree);
                if loss < best_loss - 1e-12 {
                    best_loss = loss;
                    best_rounds = round + 1;
                } else if round + 1 - best_rounds >= self.patience {
                    break;
                }
            } else {
                trees.push(tree);
                best_rounds = round + 1;
            }
        }
        trees.truncate(best_rounds.max(1).min(trees.len()));
        let rounds = trees.len();
        Ok(Gbm {
            estimator: Estimator::Trees {
                base,
                learning_rate: self.learning_rate,
                trees,
                link,
            },
            rounds,
            valid_loss,
        })
    }
}

impl Fit<Array2<f64>, Array1<f64>, TrainError> for GbmParams {
    type Object = Gbm;

    fn fit(&self, dataset: &DatasetBase<Array2<f64>, Array1<f64>>) -> Result<Gbm, TrainError> {
        self.fit_with_validation(dataset, None)
    }
}

impl PredictInplace<Array2<f64>, Array1<f64>> for Gbm {
    fn predict_inplace(&self, x: &Array2<f64>, y: &mut Array1<f64>) {
        let mut buf = Vec::with_capacity(x.ncols());
        for (i, out) in y.iter_mut().enumerate().take(x.nrows()) {
            buf.clear();
            buf.extend(x.row(i).iter().copied());
            *out = self.estimator.predict(&buf);
        }
    }

    fn default_target(&self, x: &Array2<f64>) -> Array1<f64> {
        Array1::zeros(x.nrows())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> DatasetBase<Array2<f64>, Array1<f64>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut x = Array2::zeros((n, 3));
        let mut y = Array1::zeros(n);
        for i in 0..n {
            let a: f64 = rng.random_range(-1.0..1.0);
            let b: f64 = rng.random_range(-1.0..1.0);
            x[[i, 0]] = a;
            x[[i, 1]] = if i % 7 == 0 { f64::NAN } else { b };
            x[[i, 2]] = rng.random::<f64>();
            y[i] = 3.0 * a + if b > 0.0 { 2.0 } else { -1.0 };
        }
        DatasetBase::new(x, y)
    }

    #[test]
    fn boosting_fits_a_nonlinear_function_with_missing_values() {
        let train = data(2000, 1);
        let valid = data(500, 2);
        let m = GbmParams::new(Loss::SquaredError)
            .fit_with_validation(&train, Some(&valid))
            .unwrap();
        let pred = m.predict(valid.records());
        let mse = (&pred - valid.targets()).mapv(|d| d * d).mean().unwrap();
        let var = valid.targets().var(0.0);
        assert!(mse < 0.1 * var, "mse {mse} var {var}");
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let train = data(500, 3);
        let p = GbmParams {
            max_rounds: 20,
            ..GbmParams::new(Loss::SquaredError)
        };
        let a = p.fit(&train).unwrap();
        let b = p.fit(&train).unwrap();
        assert_eq!(a.estimator, b.estimator);
    }

    #[test]
    fn logistic_loss_separates_classes() {
        let d = data(1500, 4);
        let y = d.targets().mapv(|v| if v > 1.0 { 1.0 } else { 0.0 });
        let train = DatasetBase::new(d.records().clone(), y);
        let m = GbmParams {
            max_rounds: 100,
            ..GbmParams::new(Loss::Logistic)
        }
        .fit(&train)
        .unwrap();
        let p = m.predict(train.records());
        let acc = p
            .iter()
            .zip(train.targets())
            .filter(|(p, y)| (**p >= 0.5) == (**y == 1.0))
            .count() as f64
            / 1500.0;
        assert!(acc > 0.95, "accuracy {acc}");
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
