//! The report's two PNG charts, drawn with plotters: checkpoint time
//! against memory size, and downtime by how a failover restored.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::Error;
use crate::stats::{Checkpoint, Percentiles, RestoreKind};

const SIZE: (u32, u32) = (960, 600);

/// Makes `font` (a TTF file) the charts' sans-serif font. plotters draws
/// text with a font it is given; none is built in.
pub fn use_font(font: &Path) -> Result<(), Error> {
    let bytes = std::fs::read(font).map_err(|e| Error::Font {
        path: font.to_owned(),
        message: e.to_string(),
    })?;
    // plotters keeps the font for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| {
        Error::Font {
            path: font.to_owned(),
            message: "not a TrueType font plotters can read".into(),
        }
    })
}

fn drawing(error: impl std::fmt::Display, path: &Path) -> Error {
    Error::Chart {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// Checkpoint time (s) against archive size (MiB), one point a checkpoint.
pub fn checkpoint_time_by_size(checkpoints: &[Checkpoint], path: &Path) -> Result<(), Error> {
    let points: Vec<(f64, f64)> = checkpoints
        .iter()
        .filter(|c| c.ok)
        .filter_map(|c| {
            Some((
                c.size_bytes? as f64 / f64::from(1 << 20),
                c.total_ms as f64 / 1000.0,
            ))
        })
        .collect();
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let max_y = points.iter().map(|p| p.1).fold(0.1, f64::max) * 1.1;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| drawing(e, path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Checkpoint time against memory size ({} checkpoints)",
                points.len()
            ),
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| drawing(e, path))?;
    chart
        .configure_mesh()
        .x_desc("archive size (MiB)")
        .y_desc("checkpoint time (s)")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| drawing(e, path))?;
    chart
        .draw_series(
            points
                .iter()
                .map(|(x, y)| Circle::new((*x, *y), 4, BLUE.mix(0.6).filled())),
        )
        .map_err(|e| drawing(e, path))?;
    root.present().map_err(|e| drawing(e, path))
}

/// Downtime p50 and p95 (s) for each restore kind, as paired bars.
pub fn downtime_by_kind(
    by_kind: &BTreeMap<RestoreKind, Percentiles>,
    path: &Path,
) -> Result<(), Error> {
    let kinds = [
        RestoreKind::Checkpoint,
        RestoreKind::StateApi,
        RestoreKind::Cold,
    ];
    let seconds = |ms: Option<i64>| ms.map_or(0.0, |ms| ms as f64 / 1000.0);
    let max_y = by_kind.values().map(|p| seconds(p.p95)).fold(1.0, f64::max) * 1.2;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| drawing(e, path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Downtime by restore: p50 (blue) and p95 (red)",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..3.0, 0.0..max_y)
        .map_err(|e| drawing(e, path))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(3)
        .x_label_formatter(&|x: &f64| {
            let index = x.floor() as usize;
            kinds.get(index).map_or_else(String::new, |kind| {
                let count = by_kind.get(kind).map_or(0, |p| p.count);
                format!("{kind} (n={count})")
            })
        })
        .y_desc("downtime (s)")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| drawing(e, path))?;
    for (index, kind) in kinds.iter().enumerate() {
        let Some(p) = by_kind.get(kind) else { continue };
        let left = index as f64 + 0.2;
        for (offset, value, color) in [(0.0, p.p50, BLUE), (0.3, p.p95, RED)] {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(left + offset, 0.0), (left + offset + 0.28, seconds(value))],
                    color.mix(0.7).filled(),
                )))
                .map_err(|e| drawing(e, path))?;
        }
    }
    root.present().map_err(|e| drawing(e, path))
}
