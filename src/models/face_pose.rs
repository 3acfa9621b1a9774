//! Head pose from FaceMesh landmarks: weighted similarity Procrustes (Umeyama) fit of MediaPipe's
//! canonical face to the observed landmarks, in float64.
//!
//! Definition (as in `../shared/reference/golden/README.md`): observed `Q_i = (x, -y, -z)` of
//! landmark `i` (crop pixels, y and z flipped into the canonical frame: x right, y up, z toward the
//! camera); only the Procrustes basis landmarks `k` with weights `w_k` are used. Minimise
//! `sum_k w_k |s R C_k + t - Q_k|^2`: `mC, mQ` weighted means, `S = sum_k w_k (Q_k-mQ)(C_k-mC)^T`,
//! `S = U diag(sigma) V^T`, `D = diag(1, 1, sign det(U V^T))`, `R = U D V^T`,
//! `s = trace(diag(sigma) D) / sum_k w_k |C_k - mC|^2`, `t = mQ - s R mC`. Orthographic: there is
//! no camera model. Angles: `R = Rz(roll) Ry(yaw) Rx(pitch)`; pitch = atan2(R21, R22),
//! yaw = asin(-R20), roll = atan2(R10, R00), in degrees. Yaw > 0: face turned toward image right;
//! pitch > 0: face tilted down (a frontal face reads about +6..+12 deg with this model);
//! roll > 0: rotated counter-clockwise as displayed.

use candle_core::{DType, Result};
use candle_nn::VarBuilder;
use std::path::Path;

type Mat3 = [[f64; 3]; 3];
type Vec3 = [f64; 3];

/// MediaPipe's canonical face mesh and Procrustes landmark basis
/// (`models/face_geometry.safetensors`, written by `convert-facemesh geometry`).
#[derive(Debug, Clone)]
pub struct CanonicalFace {
    /// Canonical positions of the basis landmarks (x right, y up, z toward the camera).
    points: Vec<Vec3>,
    /// Landmark ids of the basis.
    ids: Vec<usize>,
    /// Procrustes weights of the basis, used as given.
    weights: Vec<f64>,
}

/// The fitted similarity transform and the angles derived from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadPose {
    /// Rotation about the vertical axis, degrees; > 0 = face turned toward image right.
    pub yaw_deg: f64,
    /// Rotation about the horizontal axis, degrees; > 0 = face tilted down.
    pub pitch_deg: f64,
    /// In-plane rotation, degrees; > 0 = counter-clockwise as displayed.
    pub roll_deg: f64,
    /// Rotation mapping canonical to observed coordinates (row-major).
    pub rotation: Mat3,
    /// Scale, in landmark units (crop pixels) per canonical unit.
    pub scale: f64,
    /// Translation, in the observed frame (x right, y up, z toward the camera).
    pub translation: Vec3,
    /// `sqrt(sum_k w_k |s R C_k + t - Q_k|^2 / sum_k w_k)`, in landmark units.
    pub residual: f64,
}

impl CanonicalFace {
    /// Reads `canonical_mesh` `[468,3]`, `procrustes.landmark_ids` `[K]` (u32) and
    /// `procrustes.weights` `[K]`.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let mesh: Vec<Vec<f32>> = vb.get((468, 3), "canonical_mesh")?.to_vec2()?;
        let ids = vb
            .get_unchecked_dtype("procrustes.landmark_ids", DType::U32)?
            .to_vec1::<u32>()?;
        let weights = vb
            .get(ids.len(), "procrustes.weights")?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let mut points = Vec::with_capacity(ids.len());
        for &id in &ids {
            let p = mesh
                .get(id as usize)
                .ok_or_else(|| candle_core::Error::Msg(format!("landmark id {id} out of range")))?;
            points.push([p[0] as f64, p[1] as f64, p[2] as f64]);
        }
        if ids.len() < 3
            || weights.iter().any(|w| w.is_nan() || *w < 0.0)
            || weights.iter().sum::<f64>() <= 0.0
        {
            candle_core::bail!("invalid Procrustes basis");
        }
        Ok(Self {
            points,
            ids: ids.into_iter().map(|i| i as usize).collect(),
            weights,
        })
    }

    /// Loads `face_geometry.safetensors`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(super::load_weights(path)?)
    }

    /// Landmark ids of the Procrustes basis.
    pub fn landmark_ids(&self) -> &[usize] {
        &self.ids
    }

    /// Fits the pose to FaceMesh landmarks (468 x (x, y, z), crop or image pixels, y down).
    pub fn fit(&self, landmarks: &[[f32; 3]]) -> Result<HeadPose> {
        if landmarks.len() < 468 {
            candle_core::bail!("need 468 landmarks, got {}", landmarks.len());
        }
        let observed: Vec<Vec3> = self
            .ids
            .iter()
            .map(|&i| {
                let [x, y, z] = landmarks[i];
                [x as f64, -(y as f64), -(z as f64)]
            })
            .collect();
        let total: f64 = self.weights.iter().sum();
        let mean = |pts: &[Vec3]| -> Vec3 {
            let mut m = [0.0; 3];
            for (p, w) in pts.iter().zip(&self.weights) {
                (0..3).for_each(|a| m[a] += w * p[a]);
            }
            m.map(|v| v / total)
        };
        let (mc, mq) = (mean(&self.points), mean(&observed));
        let mut cov = [[0.0; 3]; 3];
        let mut var_c = 0.0;
        for ((c, q), w) in self.points.iter().zip(&observed).zip(&self.weights) {
            let dc = sub(c, &mc);
            let dq = sub(q, &mq);
            for i in 0..3 {
                for j in 0..3 {
                    cov[i][j] += w * dq[i] * dc[j];
                }
            }
            var_c += w * dot(&dc, &dc);
        }
        let (u, sigma, v) = svd3(&cov);
        let d = det(&matmul(&u, &transpose(&v))).signum();
        let d = if d == 0.0 { 1.0 } else { d };
        let mut ud = u;
        (0..3).for_each(|r| ud[r][2] *= d);
        let rotation = matmul(&ud, &transpose(&v));
        let scale = (sigma[0] + sigma[1] + d * sigma[2]) / var_c;
        let rmc = apply(&rotation, &mc);
        let translation = [0, 1, 2].map(|a| mq[a] - scale * rmc[a]);
        let mut sq = 0.0;
        for ((c, q), w) in self.points.iter().zip(&observed).zip(&self.weights) {
            let rc = apply(&rotation, c);
            let e = [0, 1, 2].map(|a| scale * rc[a] + translation[a] - q[a]);
            sq += w * dot(&e, &e);
        }
        let r = &rotation;
        Ok(HeadPose {
            yaw_deg: (-r[2][0]).clamp(-1.0, 1.0).asin().to_degrees(),
            pitch_deg: r[2][1].atan2(r[2][2]).to_degrees(),
            roll_deg: r[1][0].atan2(r[0][0]).to_degrees(),
            rotation,
            scale,
            translation,
            residual: (sq / total).sqrt(),
        })
    }
}

fn sub(a: &Vec3, b: &Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: &Vec3, b: &Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: &Vec3, b: &Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn apply(m: &Mat3, p: &Vec3) -> Vec3 {
    [dot(&m[0], p), dot(&m[1], p), dot(&m[2], p)]
}

fn transpose(m: &Mat3) -> Mat3 {
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| m[j][i]))
}

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

fn det(m: &Mat3) -> f64 {
    dot(&m[0], &cross(&m[1], &m[2]))
}

/// SVD of a 3x3 matrix by one-sided Jacobi: `a = U diag(sigma) V^T` with `U`, `V` orthogonal
/// and `sigma` non-negative, sorted descending.
fn svd3(a: &Mat3) -> (Mat3, Vec3, Mat3) {
    // Work on the columns of B = A V; rotate column pairs until they are orthogonal.
    let mut b = *a;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..60 {
        let mut rotated = false;
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            let col = |m: &Mat3, c: usize| [m[0][c], m[1][c], m[2][c]];
            let (bp, bq) = (col(&b, p), col(&b, q));
            let (alpha, beta, gamma) = (dot(&bp, &bp), dot(&bq, &bq), dot(&bp, &bq));
            if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                continue;
            }
            rotated = true;
            let zeta = (beta - alpha) / (2.0 * gamma);
            // Smaller root of t^2 + 2 zeta t - 1 = 0 (signum(+0.0) = 1).
            let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
            let c = 1.0 / (1.0 + t * t).sqrt();
            let s = c * t;
            for m in [&mut b, &mut v] {
                for row in m.iter_mut() {
                    let (x, y) = (row[p], row[q]);
                    row[p] = c * x - s * y;
                    row[q] = s * x + c * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norms =
        [0, 1, 2].map(|c| (b[0][c] * b[0][c] + b[1][c] * b[1][c] + b[2][c] * b[2][c]).sqrt());
    let mut order = [0, 1, 2];
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let sigma = order.map(|i| norms[i]);
    let mut u = [[0.0; 3]; 3];
    let mut vs = [[0.0; 3]; 3];
    let scale_max = sigma[0].max(f64::MIN_POSITIVE);
    let mut cols: Vec<Vec3> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let mut col = [b[0][i], b[1][i], b[2][i]];
        if sigma[k] > 1e-12 * scale_max {
            col = col.map(|x| x / sigma[k]);
        } else {
            // Rank-deficient: complete U with an orthonormal direction.
            col = match cols.len() {
                2 => cross(&cols[0], &cols[1]),
                _ => orthonormal_to(cols.first()),
            };
        }
        cols.push(col);
        for r in 0..3 {
            u[r][k] = col[r];
            vs[r][k] = v[r][i];
        }
    }
    (u, sigma, vs)
}

/// A unit vector orthogonal to `a` (any unit vector when `a` is `None`).
fn orthonormal_to(a: Option<&Vec3>) -> Vec3 {
    let Some(a) = a else {
        return [1.0, 0.0, 0.0];
    };
    let axis = if a[0].abs() < 0.9 {
        [1.0, 0.0, 0.0]
    } else {
        [0.0, 1.0, 0.0]
    };
    let c = cross(a, &axis);
    let n = dot(&c, &c).sqrt();
    c.map(|x| x / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_svd(a: &Mat3) {
        let (u, s, v) = svd3(a);
        let us = u.map(|row| [row[0] * s[0], row[1] * s[1], row[2] * s[2]]);
        let back = matmul(&us, &transpose(&v));
        for i in 0..3 {
            for j in 0..3 {
                assert!((back[i][j] - a[i][j]).abs() < 1e-9, "{a:?}: {back:?}");
            }
        }
        for m in [u, v] {
            let id = matmul(&transpose(&m), &m);
            for (i, row) in id.iter().enumerate() {
                for (j, x) in row.iter().enumerate() {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((x - want).abs() < 1e-9, "not orthogonal: {m:?}");
                }
            }
        }
        assert!(s[0] >= s[1] && s[1] >= s[2] && s[2] >= 0.0, "{s:?}");
    }

    #[test]
    fn svd_reconstructs() {
        check_svd(&[[3.0, 1.0, -2.0], [0.5, 4.0, 1.0], [2.0, -1.0, 0.25]]);
        check_svd(&[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, -1.0]]); // rank 2
        check_svd(&[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 6.0, 9.0]]); // rank 1
        check_svd(&[[0.0; 3]; 3]);
        check_svd(&[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]);
        check_svd(&[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -2.0]]);
    }

    #[test]
    fn recovers_a_known_similarity() {
        // Canonical points, then observed = s R C + t with known angles; the fit must return them.
        let points: Vec<Vec3> = (0..12)
            .map(|i| {
                let f = i as f64;
                [
                    (f * 1.3).sin() * 5.0,
                    (f * 0.7).cos() * 4.0,
                    (f * 2.1).sin() * 3.0,
                ]
            })
            .collect();
        let mut mesh = vec![[0f32; 3]; 468];
        let ids: Vec<usize> = (0..12).map(|i| i * 37).collect();
        let (yaw, pitch, roll) = (20f64.to_radians(), (-12f64).to_radians(), 7f64.to_radians());
        let rx = [
            [1.0, 0.0, 0.0],
            [0.0, pitch.cos(), -pitch.sin()],
            [0.0, pitch.sin(), pitch.cos()],
        ];
        let ry = [
            [yaw.cos(), 0.0, yaw.sin()],
            [0.0, 1.0, 0.0],
            [-yaw.sin(), 0.0, yaw.cos()],
        ];
        let rz = [
            [roll.cos(), -roll.sin(), 0.0],
            [roll.sin(), roll.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        let r = matmul(&rz, &matmul(&ry, &rx));
        for (p, &id) in points.iter().zip(&ids) {
            let q = apply(&r, p);
            // Observed landmark (x, -y, -z) of s R C + t.
            mesh[id] = [
                (3.0 * q[0] + 90.0) as f32,
                -(3.0 * q[1] - 80.0) as f32,
                -(3.0 * q[2] + 5.0) as f32,
            ];
        }
        let face = CanonicalFace {
            points,
            ids,
            weights: (0..12).map(|i| 0.5 + i as f64 * 0.1).collect(),
        };
        let pose = face.fit(&mesh).unwrap();
        assert!((pose.yaw_deg - 20.0).abs() < 1e-4, "{pose:?}");
        assert!((pose.pitch_deg + 12.0).abs() < 1e-4, "{pose:?}");
        assert!((pose.roll_deg - 7.0).abs() < 1e-4, "{pose:?}");
        assert!(
            (pose.scale - 3.0).abs() < 1e-5 && pose.residual < 1e-4,
            "{pose:?}"
        );
    }
}
