//! The statistics the policies need, written to give the same numbers as the Java libraries
//! CloudSim uses (Apache Commons Math `Percentile`, `SimpleRegression`), so that threshold
//! decisions agree with the reference simulator even at the borderline.

/// Median (Commons Math `getPercentile(50)`: the mean of the two middle values for even n).
/// NaN for an empty slice.
pub(crate) fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        let (lo, hi) = (v[n / 2 - 1], v[n / 2]);
        lo + 0.5 * (hi - lo)
    }
}

/// Median absolute deviation from the median.
pub(crate) fn mad(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let m = median(xs);
    let dev: Vec<f64> = xs.iter().map(|x| (m - x).abs()).collect();
    median(&dev)
}

/// Interquartile range as CloudSim's `MathUtil.iqr` computes it: sorted values at positions
/// round(0.25·(n+1))−1 and round(0.75·(n+1))−1.
pub(crate) fn iqr(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let pos = |q: f64| -> usize {
        let p = (q * (n + 1.0) + 0.5).floor() - 1.0;
        (p.max(0.0) as usize).min(v.len() - 1)
    };
    v[pos(0.75)] - v[pos(0.25)]
}

/// Ordinary least squares of `y` on x = 1, 2, …, n, with Commons Math `SimpleRegression`'s
/// update formulas. Returns (intercept, slope); None with fewer than 3 points or no spread.
pub(crate) fn ols_on_index(y: &[f64]) -> Option<(f64, f64)> {
    if y.len() < 3 {
        return None;
    }
    let (mut n, mut xbar, mut ybar) = (0.0f64, 0.0f64, 0.0f64);
    let (mut sxx, mut sxy, mut sum_x, mut sum_y) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (i, &yi) in y.iter().enumerate() {
        let xi = (i + 1) as f64;
        if n == 0.0 {
            xbar = xi;
            ybar = yi;
        } else {
            let fact1 = 1.0 + n;
            let fact2 = n / (1.0 + n);
            let dx = xi - xbar;
            let dy = yi - ybar;
            sxx += dx * dx * fact2;
            sxy += dx * dy * fact2;
            xbar += dx / fact1;
            ybar += dy / fact1;
        }
        sum_x += xi;
        sum_y += yi;
        n += 1.0;
    }
    if sxx.abs() < 10.0 * f64::MIN_POSITIVE {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = (sum_y - slope * sum_x) / n;
    (intercept.is_finite() && slope.is_finite()).then_some((intercept, slope))
}

/// Weighted least squares of `y` on x = 1..n. None when the weights leave no spread in x.
pub(crate) fn wls_on_index(y: &[f64], w: &[f64]) -> Option<(f64, f64)> {
    let (mut sw, mut swx, mut swy) = (0.0, 0.0, 0.0);
    for (i, (&yi, &wi)) in y.iter().zip(w).enumerate() {
        let xi = (i + 1) as f64;
        sw += wi;
        swx += wi * xi;
        swy += wi * yi;
    }
    if sw <= 0.0 {
        return None;
    }
    let (mx, my) = (swx / sw, swy / sw);
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (i, (&yi, &wi)) in y.iter().zip(w).enumerate() {
        let dx = (i + 1) as f64 - mx;
        sxx += wi * dx * dx;
        sxy += wi * dx * (yi - my);
    }
    if sxx <= 1e-12 * sw {
        return None;
    }
    let slope = sxy / sxx;
    Some((my - slope * mx, slope))
}

/// Robust local regression on x = 1..n: starts from the Theil–Sen line (median of pairwise
/// slopes), then up to four rounds of weighted least squares with tricube weights by distance
/// from the newest sample times bisquare weights of the residuals (Cleveland's LOESS
/// robustness iterations). An outlier therefore cannot drag the line.
pub(crate) fn robust_on_index(y: &[f64]) -> Option<(f64, f64)> {
    let n = y.len();
    if n < 3 {
        return None;
    }
    let x = |i: usize| (i + 1) as f64;
    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            slopes.push((y[j] - y[i]) / (x(j) - x(i)));
        }
    }
    let mut b = median(&slopes);
    let intercepts: Vec<f64> = (0..n).map(|i| y[i] - b * x(i)).collect();
    let mut a = median(&intercepts);
    if !(a.is_finite() && b.is_finite()) {
        return ols_on_index(y);
    }
    let span = n as f64;
    let tricube: Vec<f64> = (1..=n)
        .map(|i| {
            let d = (n - i) as f64 / span;
            (1.0 - d * d * d).powi(3)
        })
        .collect();
    for _ in 0..4 {
        let residuals: Vec<f64> = (0..n).map(|i| y[i] - (a + b * x(i))).collect();
        let abs: Vec<f64> = residuals.iter().map(|r| r.abs()).collect();
        let s6 = 6.0 * median(&abs);
        if s6 <= 1e-12 {
            break;
        }
        let w: Vec<f64> = residuals
            .iter()
            .zip(&tricube)
            .map(|(r, t)| {
                let u = r / s6;
                if u.abs() < 1.0 {
                    (1.0 - u * u).powi(2) * t
                } else {
                    0.0
                }
            })
            .collect();
        match wls_on_index(y, &w) {
            Some((na, nb)) => {
                a = na;
                b = nb;
            }
            None => break,
        }
    }
    Some((a, b))
}

/// Coefficient of determination R² of the least-squares regression (with intercept) of `y`
/// on the columns `xs` (each as long as `y`). None when the degrees of freedom are not
/// positive (fewer samples than regressors + 2) or `y` is constant. Collinear columns are
/// dropped (Gram–Schmidt), which leaves R² unchanged.
pub(crate) fn r_squared(y: &[f64], xs: &[&[f64]]) -> Option<f64> {
    let m = y.len();
    if xs.is_empty() || m <= xs.len() + 1 {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let my = mean(y);
    let yc: Vec<f64> = y.iter().map(|v| v - my).collect();
    let sst: f64 = yc.iter().map(|v| v * v).sum();
    if sst <= 1e-18 {
        return None;
    }
    // Orthonormal basis of the centred regressors.
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(xs.len());
    for x in xs {
        let mx = mean(x);
        let mut c: Vec<f64> = x.iter().map(|v| v - mx).collect();
        let norm0: f64 = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm0 <= 1e-12 {
            continue;
        }
        for b in &basis {
            let dot: f64 = c.iter().zip(b).map(|(p, q)| p * q).sum();
            for (ci, bi) in c.iter_mut().zip(b) {
                *ci -= dot * bi;
            }
        }
        let norm: f64 = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm <= 1e-9 * norm0 {
            continue;
        }
        for ci in &mut c {
            *ci /= norm;
        }
        basis.push(c);
    }
    let ssr: f64 = basis.iter().map(|b| b.iter().zip(&yc).map(|(p, q)| p * q).sum::<f64>().powi(2)).sum();
    Some((ssr / sst).clamp(0.0, 1.0))
}

/// The q-quantile (0..=1) by linear interpolation between order statistics (R type 7).
/// NaN for an empty slice.
pub(crate) fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    quantile_in_place(&mut v, q)
}

/// [`quantile`] of a scratch buffer, which it sorts (insertion sort: the windows are short).
pub(crate) fn quantile_in_place(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    if v.len() <= 32 {
        for i in 1..v.len() {
            let x = v[i];
            let mut j = i;
            while j > 0 && v[j - 1].total_cmp(&x).is_gt() {
                v[j] = v[j - 1];
                j -= 1;
            }
            v[j] = x;
        }
    } else {
        v.sort_by(f64::total_cmp);
    }
    let h = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_mad_iqr() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(mad(&[1.0, 1.0, 2.0, 2.0, 4.0, 6.0, 9.0]), 1.0);
        // n = 8: positions round(2.25)-1 = 1 and round(6.75)-1 = 6.
        assert_eq!(iqr(&[8.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), 5.0);
    }

    #[test]
    fn ols_fits_a_line() {
        let y: Vec<f64> = (1..=10).map(|x| 0.5 + 0.1 * x as f64).collect();
        let (a, b) = ols_on_index(&y).expect("fit");
        assert!((a - 0.5).abs() < 1e-12 && (b - 0.1).abs() < 1e-12);
        assert!(ols_on_index(&[1.0, 2.0]).is_none());
        let (a, b) = robust_on_index(&y).expect("fit");
        assert!((a - 0.5).abs() < 1e-9 && (b - 0.1).abs() < 1e-9);
    }

    #[test]
    fn robust_fit_ignores_an_outlier() {
        let mut y: Vec<f64> = (1..=10).map(|x| 0.1 * x as f64).collect();
        y[4] = 5.0;
        let (_, b) = robust_on_index(&y).expect("fit");
        assert!((b - 0.1).abs() < 0.02, "slope {b}");
    }

    #[test]
    fn r_squared_of_exact_and_unrelated() {
        let x1 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y: Vec<f64> = x1.iter().map(|v| 2.0 * v + 1.0).collect();
        assert!((r_squared(&y, &[&x1]).expect("r2") - 1.0).abs() < 1e-12);
        assert!(r_squared(&y[..2], &[&x1[..2]]).is_none());
        let z = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0];
        assert!(r_squared(&z, &[&x1]).expect("r2") < 0.2);
    }

    #[test]
    fn quantile_interpolates() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(quantile(&[1.0, 2.0], 1.0), 2.0);
        assert!((quantile(&[1.0, 2.0], 0.25) - 1.25).abs() < 1e-12);
        assert!(quantile(&[], 0.5).is_nan());
        let long: Vec<f64> = (0..100).rev().map(f64::from).collect();
        assert_eq!(quantile(&long, 0.5), 49.5);
    }
}
