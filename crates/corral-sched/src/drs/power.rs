//! Host power models: watts drawn as a function of CPU utilisation, given as equally spaced
//! points from 0% to 100% (SPECpower style) and interpolated linearly in between.
//!
//! With 11 points the arithmetic is CloudSim's `PowerModelSpecPower` operation for operation,
//! so that the simulator reproduces its energy figures to the last bit.

use serde::{Deserialize, Serialize};

/// Watts at 0%, 1/(n−1), …, 100% CPU utilisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f64>", into = "Vec<f64>")]
pub struct PowerModel {
    points: Vec<f64>,
}

/// A power curve that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PowerModelError {
    #[error("a power curve needs at least 2 points (watts at 0% and at 100% utilisation), got {0}")]
    TooFewPoints(usize),
    #[error("power curve point {index} is {value}: watts must be finite and non-negative")]
    BadPoint { index: usize, value: f64 },
}

impl PowerModel {
    /// A curve from watts at equally spaced utilisations, 0% first and 100% last.
    pub fn new(points: Vec<f64>) -> Result<Self, PowerModelError> {
        if points.len() < 2 {
            return Err(PowerModelError::TooFewPoints(points.len()));
        }
        if let Some((index, &value)) = points.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w >= 0.0)) {
            return Err(PowerModelError::BadPoint { index, value });
        }
        Ok(PowerModel { points })
    }

    /// A straight line from `idle` watts at 0% to `max` watts at 100%.
    pub fn linear(idle: f64, max: f64) -> Self {
        PowerModel { points: vec![idle.max(0.0), max.max(0.0)] }
    }

    /// HP ProLiant ML110 G4 (Xeon 3040), SPECpower: the standard experiment's smaller host.
    pub fn hp_ml110_g4() -> Self {
        PowerModel { points: vec![86.0, 89.4, 92.6, 96.0, 99.5, 102.0, 106.0, 108.0, 112.0, 114.0, 117.0] }
    }

    /// HP ProLiant ML110 G5 (Xeon 3075), SPECpower: the standard experiment's larger host.
    pub fn hp_ml110_g5() -> Self {
        PowerModel { points: vec![93.7, 97.0, 101.0, 105.0, 110.0, 116.0, 121.0, 125.0, 129.0, 133.0, 135.0] }
    }

    /// The points, 0% first.
    pub fn points(&self) -> &[f64] {
        &self.points
    }

    /// Watts at 0% utilisation (switched on, idle).
    pub fn idle(&self) -> f64 {
        self.points[0]
    }

    /// Watts at 100% utilisation.
    pub fn max(&self) -> f64 {
        self.points[self.points.len() - 1]
    }

    /// Watts at utilisation `u` (a fraction; clamped to 0..=1, NaN counts as 0).
    pub fn watts(&self, u: f64) -> f64 {
        let u = if u.is_nan() { 0.0 } else { u.clamp(0.0, 1.0) };
        let steps = (self.points.len() - 1) as f64;
        // CloudSim: `if (utilization % 0.1 == 0) return data[(int) (utilization * 10)]`.
        if u % (1.0 / steps) == 0.0 {
            return self.points[((u * steps) as usize).min(self.points.len() - 1)];
        }
        let i1 = (u * steps).floor();
        let i2 = (u * steps).ceil();
        let p1 = self.points[(i1 as usize).min(self.points.len() - 1)];
        let p2 = self.points[(i2 as usize).min(self.points.len() - 1)];
        let delta = (p2 - p1) / steps;
        p1 + delta * (u - i1 / steps) * (steps * steps)
    }
}

impl TryFrom<Vec<f64>> for PowerModel {
    type Error = PowerModelError;
    fn try_from(points: Vec<f64>) -> Result<Self, Self::Error> {
        PowerModel::new(points)
    }
}

impl From<PowerModel> for Vec<f64> {
    fn from(m: PowerModel) -> Self {
        m.points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_between_points() {
        let g4 = PowerModel::hp_ml110_g4();
        assert_eq!(g4.watts(0.0), 86.0);
        assert_eq!(g4.watts(1.0), 117.0);
        assert!((g4.watts(0.05) - 87.7).abs() < 1e-9);
        assert!((g4.watts(0.55) - 104.0).abs() < 1e-9);
        assert_eq!(g4.watts(2.0), 117.0);
        assert_eq!(g4.watts(-1.0), 86.0);
        let lin = PowerModel::linear(100.0, 200.0);
        assert!((lin.watts(0.25) - 125.0).abs() < 1e-9);
    }

    #[test]
    fn rejects_bad_curves() {
        assert!(PowerModel::new(vec![1.0]).is_err());
        assert!(PowerModel::new(vec![1.0, f64::NAN]).is_err());
        assert!(PowerModel::new(vec![-1.0, 2.0]).is_err());
    }
}
