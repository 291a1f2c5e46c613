//! `--plot FILE.svg`: the latency spectrum (latency against percentile on a
//! "nines" axis, as HdrHistogram's plotter draws it), one line per measured path.

use crate::latency::LatencyRecorder;
use plotters::prelude::*;
use std::path::Path;

/// Maps a percentile to the "nines" axis: 90 -> 1, 99 -> 2, 99.9 -> 3.
fn nines(percentile: f64) -> f64 {
    let tail = (100.0 - percentile).max(1e-4) / 100.0;
    -tail.log10()
}

pub fn write_spectrum_svg(path: &Path, series: &[(&str, &LatencyRecorder)]) -> Result<(), String> {
    let points: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, recorder)| {
            let pts = recorder
                .spectrum()
                .into_iter()
                .map(|(p, v)| (nines(p), v as f64))
                .collect();
            (*name, pts)
        })
        .collect();
    let y_max = points
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Yellowstone latency by percentile", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0f64..4.0f64, 0.0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_label_formatter(&|x| format!("{:.4}%", 100.0 - 100.0 * 10f64.powf(-x)))
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (index, (name, pts)) in points.into_iter().enumerate() {
        let color = colors[index % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!(nines(100.0) <= 6.0 + 1e-9);
    }

    #[test]
    fn writes_an_svg() {
        let mut recorder = LatencyRecorder::new();
        for v in 1..1000 {
            recorder.record_us(v);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spectrum.svg");
        write_spectrum_svg(&path, &[("rfc -> ticket", &recorder)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("<svg"),
            "not an svg: {}",
            &text[..text.len().min(80)]
        );
        assert!(text.contains("ticket"), "legend missing");
    }
}
