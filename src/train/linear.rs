//! The plain baseline: linear models on standardised features (ridge regression for time to
//! failure, linfa's logistic regression for the classifier). Scalers are fitted on training rows.

use super::TrainError;
use crate::predict::{Estimator, Link, Scaler};
use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};

/// Mean and standard deviation of each feature over the finite values of `rows`.
pub fn fit_scaler(rows: &[&[f64]], n_features: usize) -> Scaler {
    let mut s = vec![0.0; n_features];
    let mut ss = vec![0.0; n_features];
    let mut n = vec![0.0; n_features];
    for r in rows {
        for (j, v) in r.iter().enumerate().take(n_features) {
            if v.is_finite() {
                s[j] += v;
                ss[j] += v * v;
                n[j] += 1.0;
            }
        }
    }
    let mean: Vec<f64> = (0..n_features)
        .map(|j| if n[j] > 0.0 { s[j] / n[j] } else { 0.0 })
        .collect();
    let std = (0..n_features)
        .map(|j| {
            if n[j] > 1.0 {
                (ss[j] / n[j] - mean[j] * mean[j]).max(0.0).sqrt()
            } else {
                0.0
            }
        })
        .collect();
    Scaler { mean, std }
}

fn scaled(rows: &[&[f64]], scaler: &Scaler) -> Array2<f64> {
    let p = scaler.mean.len();
    let mut z = Array2::zeros((rows.len(), p));
    let mut buf = Vec::with_capacity(p);
    for (i, r) in rows.iter().enumerate() {
        scaler.transform(r, &mut buf);
        for (j, v) in buf.iter().enumerate() {
            z[[i, j]] = *v;
        }
    }
    z
}

/// Ridge regression (L2 penalty `lambda` on standardised weights), solved by Cholesky.
pub fn ridge(
    rows: &[&[f64]],
    y: &[f64],
    scaler: Scaler,
    lambda: f64,
) -> Result<Estimator, TrainError> {
    let z = scaled(rows, &scaler);
    let p = z.ncols();
    let n = y.len().max(1) as f64;
    let ybar = y.iter().sum::<f64>() / n;
    let yc = Array1::from_iter(y.iter().map(|v| v - ybar));
    let mut a = z.t().dot(&z);
    for j in 0..p {
        a[[j, j]] += lambda * n;
    }
    let b = z.t().dot(&yc);
    let weights = cholesky_solve(a, b).ok_or_else(|| {
        TrainError::Data("ridge regression: normal equations are singular".into())
    })?;
    Ok(Estimator::Linear {
        scaler,
        weights,
        bias: ybar,
        link: Link::Identity,
    })
}

fn cholesky_solve(mut a: Array2<f64>, b: Array1<f64>) -> Option<Vec<f64>> {
    let p = b.len();
    for j in 0..p {
        let mut d = a[[j, j]];
        for k in 0..j {
            d -= a[[j, k]] * a[[j, k]];
        }
        if d <= 1e-12 {
            return None;
        }
        let d = d.sqrt();
        a[[j, j]] = d;
        for i in j + 1..p {
            let mut s = a[[i, j]];
            for k in 0..j {
                s -= a[[i, k]] * a[[j, k]];
            }
            a[[i, j]] = s / d;
        }
    }
    let mut y = vec![0.0; p];
    for i in 0..p {
        let mut s = b[i];
        for k in 0..i {
            s -= a[[i, k]] * y[k];
        }
        y[i] = s / a[[i, i]];
    }
    let mut x = vec![0.0; p];
    for i in (0..p).rev() {
        let mut s = y[i];
        for k in i + 1..p {
            s -= a[[k, i]] * x[k];
        }
        x[i] = s / a[[i, i]];
    }
    Some(x)
}

/// Logistic regression through linfa-logistic. linfa reports P(the first label it saw), so the
/// weights are turned around when that label is `false` (linfa#393).
pub fn logistic(rows: &[&[f64]], y: &[bool], scaler: Scaler) -> Result<Estimator, TrainError> {
    let z = scaled(rows, &scaler);
    let ds = linfa::Dataset::new(z, Array1::from_vec(y.to_vec()));
    let fitted = LogisticRegression::default()
        .alpha(1.0)
        .max_iterations(200)
        .fit(&ds)?;
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    Ok(Estimator::Linear {
        scaler,
        weights: fitted.params().iter().map(|w| sign * w).collect(),
        bias: sign * fitted.intercept(),
        link: Link::Logistic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_a_linear_relation_and_logistic_points_the_right_way() {
        let data: Vec<Vec<f64>> = (0..200).map(|i| vec![i as f64, (i % 7) as f64]).collect();
        let rows: Vec<&[f64]> = data.iter().map(|r| r.as_slice()).collect();
        let y: Vec<f64> = data.iter().map(|r| 3.0 * r[0] + 1.0).collect();
        let m = ridge(&rows, &y, fit_scaler(&rows, 2), 1e-6).unwrap();
        assert!((m.predict(&[50.0, 3.0]) - 151.0).abs() < 0.5);
        let cls: Vec<bool> = data.iter().map(|r| r[0] > 150.0).collect();
        let m = logistic(&rows, &cls, fit_scaler(&rows, 2)).unwrap();
        assert!(m.predict(&[190.0, 1.0]) > 0.8 && m.predict(&[10.0, 1.0]) < 0.2);
    }
}
