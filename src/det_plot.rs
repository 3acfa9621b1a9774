//! DET plots (ISO/IEC 19795-1 style): BPCER against APCER, both on normal-deviate (probit) axes.
//!
//! Drawn with `plotters` into an RGB buffer and written as PNG by the `image` crate. Text is
//! rendered by `ab_glyph` from [`FONT_PATH`], read at run time, so no system font library
//! (fontconfig, freetype) is linked.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::eval::{det_curve, eer, OperatingPoint, ScoreLists};

/// The TrueType font the labels are drawn with (Debian package `fonts-dejavu-core`).
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 820;

/// Tick rates on both axes; the axes run from one of the low ones to [`HIGHEST_RATE`].
const TICKS: [f64; 10] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.10, 0.20, 0.40, 0.60,
];
const HIGHEST_RATE: f64 = 0.60;

/// Curve colours for the networks, in order; the final score is black.
const NETWORK_COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

/// Why a DET plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DetPlotError {
    #[error("a DET plot needs live and spoof photos ({live} live, {spoof} spoof)")]
    MissingClass { live: usize, spoof: usize },
    #[error("the DET plot needs the font {FONT_PATH} (Debian package fonts-dejavu-core): {0}")]
    FontMissing(std::io::Error),
    #[error("{FONT_PATH} is not a usable TrueType font")]
    InvalidFont,
    #[error("drawing the DET plot failed: {0}")]
    Draw(String),
    #[error("writing the PNG failed: {0}")]
    Write(#[from] image::ImageError),
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for DetPlotError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        Self::Draw(e.to_string())
    }
}

/// Registers [`FONT_PATH`] as plotters' `sans-serif` (read once per process; plotters keeps
/// fonts for the whole process, hence the `'static` bytes).
fn register_font() -> Result<(), DetPlotError> {
    static FONT: OnceLock<&'static [u8]> = OnceLock::new();
    let bytes = match FONT.get() {
        Some(bytes) => *bytes,
        None => {
            let read = std::fs::read(FONT_PATH).map_err(DetPlotError::FontMissing)?;
            *FONT.get_or_init(|| Box::leak(read.into_boxed_slice()))
        }
    };
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| DetPlotError::InvalidFont)
}

/// The standard normal quantile (probit), by Acklam's rational approximation (relative error
/// below 1.2e-9 over (0, 1)); ±infinity at 0 and 1.
fn probit(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const TAIL: f64 = 0.02425;
    let polynomial =
        |coefficients: &[f64], x: f64| coefficients.iter().fold(0.0, |acc, c| acc * x + c);
    let lower_tail = |p: f64| {
        let q = (-2.0 * p.ln()).sqrt();
        polynomial(&C, q) / (polynomial(&D, q) * q + 1.0)
    };
    if p <= 0.0 {
        f64::NEG_INFINITY
    } else if p >= 1.0 {
        f64::INFINITY
    } else if p < TAIL {
        lower_tail(p)
    } else if p > 1.0 - TAIL {
        -lower_tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        polynomial(&A, r) * q / (polynomial(&B, r) * r + 1.0)
    }
}

/// An error-rate axis linear in probit(rate); rates outside it are drawn on its edge (a rate of
/// 0 has no place on a probit axis).
#[derive(Debug, Clone, Copy)]
struct ProbitAxis {
    lowest: f64,
    highest: f64,
}

impl ProbitAxis {
    /// From the lowest tick at or below half the smallest non-zero rate `1 / n` of the larger
    /// class, so the first error of each class is inside the plot, up to [`HIGHEST_RATE`].
    fn for_class_sizes(n_live: usize, n_spoof: usize) -> Self {
        let half_resolution = 0.5 / n_live.max(n_spoof).max(1) as f64;
        let lowest = TICKS
            .iter()
            .copied()
            .rev()
            .find(|&t| t <= half_resolution)
            .unwrap_or(TICKS[0]);
        Self {
            lowest,
            highest: HIGHEST_RATE,
        }
    }
}

impl Ranged for ProbitAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, rate: &f64, limit: (i32, i32)) -> i32 {
        let (low, high) = (probit(self.lowest), probit(self.highest));
        let at = (probit(rate.clamp(self.lowest, self.highest)) - low) / (high - low);
        limit.0 + (at * f64::from(limit.1 - limit.0)).round() as i32
    }

    /// The ticks for labels and bold grid lines; no light grid lines.
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        TICKS
            .iter()
            .copied()
            .filter(|t| (self.lowest..=self.highest).contains(t))
            .collect()
    }

    fn range(&self) -> Range<f64> {
        self.lowest..self.highest
    }
}

/// Tick labels as percentages: `0.5%`, `1%`, `40%`.
impl ValueFormatter<f64> for ProbitAxis {
    fn format(rate: &f64) -> String {
        let percent = rate * 100.0;
        if percent < 1.0 {
            format!("{percent:.1}%")
        } else {
            format!("{percent:.0}%")
        }
    }
}

/// The (APCER, BPCER) corners of a scorer's DET curve, by rising threshold. Points in the middle
/// of a horizontal or vertical run are dropped: they add nothing to the staircase, and each
/// joint of a thick line would draw a one-pixel jog.
fn curve(lists: &ScoreLists) -> Vec<(f64, f64)> {
    let points: Vec<(f64, f64)> = det_curve(&lists.lives, &lists.spoofs)
        .into_iter()
        .filter(|p| !p.apcer.is_nan() && !p.bpcer.is_nan())
        .map(|p| (p.apcer, p.bpcer))
        .collect();
    let inside_a_run = |i: usize| {
        let (before, at, after) = (points[i - 1], points[i], points[i + 1]);
        (before.0 == at.0 && at.0 == after.0) || (before.1 == at.1 && at.1 == after.1)
    };
    (0..points.len())
        .filter(|&i| i == 0 || i + 1 == points.len() || !inside_a_run(i))
        .map(|i| points[i])
        .collect()
}

/// Draws DET curves of each network and of the final score into the PNG `path`, marks the final
/// score's `operating_point` and the APCER = BPCER diagonal (where each curve crosses it is its
/// EER, quoted in the legend).
pub fn draw_det_plot(
    path: &Path,
    title: &str,
    networks: &[ScoreLists],
    final_score: &ScoreLists,
    operating_point: &OperatingPoint,
) -> Result<(), DetPlotError> {
    let (live, spoof) = (final_score.lives.len(), final_score.spoofs.len());
    if live == 0 || spoof == 0 {
        return Err(DetPlotError::MissingClass { live, spoof });
    }
    register_font()?;
    let axis = ProbitAxis::for_class_sizes(live, spoof);
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(75)
            .build_cartesian_2d(axis, axis)?;
        chart
            .configure_mesh()
            .x_desc("APCER: attacks accepted")
            .y_desc("BPCER: live photos rejected")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .bold_line_style(BLACK.mix(0.15))
            .draw()?;
        chart.draw_series(LineSeries::new(
            [(axis.lowest, axis.lowest), (axis.highest, axis.highest)],
            BLACK.mix(0.35),
        ))?;
        let legend = |lists: &ScoreLists| {
            let eer = eer(&lists.lives, &lists.spoofs);
            format!("{} (EER {:.1}%)", lists.name, eer.rate * 100.0)
        };
        for (lists, colour) in networks.iter().zip(NETWORK_COLOURS.iter().cycle()) {
            let style = colour.stroke_width(2);
            chart
                .draw_series(LineSeries::new(curve(lists), style))?
                .label(legend(lists))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
        }
        let style = BLACK.stroke_width(3);
        chart
            .draw_series(LineSeries::new(curve(final_score), style))?
            .label(legend(final_score))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
        let marked = (operating_point.apcer, operating_point.bpcer);
        chart
            .draw_series([Circle::new(marked, 7, RED.filled())])?
            .label(format!(
                "threshold {:.2}: APCER {:.1}%, BPCER {:.1}%",
                operating_point.threshold,
                operating_point.apcer * 100.0,
                operating_point.bpcer * 100.0
            ))
            .legend(|(x, y)| Circle::new((x + 12, y), 6, RED.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.5))
            .draw()?;
        root.present()?;
    }
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels)
        .expect("the buffer holds WIDTH x HEIGHT RGB pixels");
    image.save_with_format(path, image::ImageFormat::Png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::coord::ranged1d::BoldPoints;

    #[test]
    fn probit_matches_normal_quantiles() {
        // Standard normal table: Φ⁻¹(0.5) = 0, Φ⁻¹(0.975) = 1.959964, Φ⁻¹(0.01) = -2.326348,
        // Φ⁻¹(0.001) = -3.090232 (lower tail branch), Φ⁻¹(0.6) = 0.253347.
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_964),
            (0.01, -2.326_348),
            (0.001, -3.090_232),
            (0.6, 0.253_347),
        ] {
            assert!((probit(p) - z).abs() < 1e-6, "probit({p}) = {}", probit(p));
            assert!((probit(1.0 - p) + z).abs() < 1e-6, "symmetry at {p}");
        }
        assert_eq!(probit(0.0), f64::NEG_INFINITY);
    }

    #[test]
    fn axis_starts_below_the_first_error_and_maps_in_probit() {
        // 60 spoofs: one error is 1.67%; half of it 0.83% -> the 0.5% tick.
        let axis = ProbitAxis::for_class_sizes(42, 60);
        assert_eq!((axis.lowest, axis.highest), (0.005, HIGHEST_RATE));
        // probit(0.5%) = -2.5758, probit(60%) = 0.2533; 10% (-1.2816) sits at
        // (2.5758 - 1.2816) / 2.8291 = 45.75% of the span.
        assert_eq!(axis.map(&0.10, (0, 1000)), 457);
        assert_eq!(axis.map(&0.0, (0, 1000)), 0);
        assert_eq!(axis.map(&1.0, (0, 1000)), 1000);
        assert_eq!(
            axis.key_points(BoldPoints(10)),
            [0.005, 0.01, 0.02, 0.05, 0.10, 0.20, 0.40, 0.60]
        );
        assert_eq!(ProbitAxis::format(&0.005), "0.5%");
        assert_eq!(ProbitAxis::format(&0.4), "40%");
    }

    #[test]
    fn curve_keeps_only_the_staircase_corners() {
        // Thresholds 0.1 (A 1, B 0), 0.2 (2/3, 0), 0.3 (1/3, 0), 0.7 (0, 0), 0.8 (0, 1/2),
        // inf (0, 1): the run along B = 0 keeps its ends, the run along A = 0 loses (0, 1/2).
        let lists = ScoreLists {
            name: "s".into(),
            lives: vec![0.7, 0.8],
            spoofs: vec![0.1, 0.2, 0.3],
        };
        assert_eq!(curve(&lists), [(1.0, 0.0), (0.0, 0.0), (0.0, 1.0)]);
    }

    #[test]
    fn draws_a_png_with_the_curves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("det.png");
        let lists = |name: &str, shift: f32| ScoreLists {
            name: name.into(),
            lives: (0..40).map(|i| 0.3 + shift + i as f32 / 60.0).collect(),
            spoofs: (0..40).map(|i| i as f32 / 60.0).collect(),
        };
        let final_score = lists("final score", 0.1);
        let point = OperatingPoint::at(&final_score.lives, &final_score.spoofs, 0.5);
        draw_det_plot(&path, "test", &[lists("net", 0.0)], &final_score, &point).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        let red = image.pixels().filter(|p| p.0 == [255, 0, 0]).count();
        let black = image.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        assert!(red > 50 && black > 500, "red {red}, black {black}");

        let no_spoofs = ScoreLists {
            spoofs: Vec::new(),
            ..final_score
        };
        let refused = draw_det_plot(&path, "test", &[], &no_spoofs, &point);
        assert!(matches!(
            refused,
            Err(DetPlotError::MissingClass { live: 40, spoof: 0 })
        ));
    }
}
