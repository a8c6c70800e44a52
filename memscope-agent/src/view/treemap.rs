//! Squarified treemap layout (Bruls, Huizing, van Wijk, 2000): each item gets a rectangle whose
//! area is proportional to its size, with aspect ratios kept near 1.
//!
//! Written here because the one crate on crates.io for it (`treemap` 0.3.2) does not keep areas
//! proportional: for sizes 6, 6, 4, 3, 2, 2, 1 in 600×400 its two items of size 2 got 25 044 and
//! 6 957 square units instead of 20 000 each, and it panics on a NaN size. The test below checks
//! the property that crate misses.

/// A rectangle: top-left corner, width, height.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn new(x: f64, y: f64, w: f64, h: f64) -> Rect {
        Rect { x, y, w, h }
    }

    pub fn area(&self) -> f64 {
        self.w * self.h
    }

    /// The rectangle shrunk by `d` on each side (never below zero size).
    pub fn inset(&self, d: f64) -> Rect {
        let dx = d.min(self.w / 2.0);
        let dy = d.min(self.h / 2.0);
        Rect::new(
            self.x + dx,
            self.y + dy,
            self.w - 2.0 * dx,
            self.h - 2.0 * dy,
        )
    }
}

/// Lays out `sizes` in `bounds`; returns one rectangle per size, in the order given. Sizes that are
/// zero, negative or not finite get an empty rectangle at the corner of `bounds`.
pub fn squarify(sizes: &[f64], bounds: Rect) -> Vec<Rect> {
    let empty = Rect::new(bounds.x, bounds.y, 0.0, 0.0);
    let mut out = vec![empty; sizes.len()];
    let valid = |s: f64| s.is_finite() && s > 0.0;
    let total: f64 = sizes.iter().copied().filter(|s| valid(*s)).sum();
    if total <= 0.0 || bounds.area() <= 0.0 {
        return out;
    }
    // Largest first, sizes scaled to areas.
    let scale = bounds.area() / total;
    let mut order: Vec<(usize, f64)> = sizes
        .iter()
        .enumerate()
        .filter(|(_, s)| valid(**s))
        .map(|(i, s)| (i, s * scale))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));

    let mut free = bounds;
    let mut row: Vec<(usize, f64)> = Vec::new();
    let mut next = 0;
    while next < order.len() {
        let side = free.w.min(free.h);
        let item = order[next];
        let with = worst(row.iter().map(|r| r.1).chain([item.1]), side);
        if row.is_empty() || with <= worst(row.iter().map(|r| r.1), side) {
            row.push(item);
            next += 1;
        } else {
            free = lay_row(&row, free, &mut out);
            row.clear();
        }
    }
    if !row.is_empty() {
        lay_row(&row, free, &mut out);
    }
    out
}

/// The worst aspect ratio of a row of `areas` laid along a side of length `side`.
fn worst(areas: impl Iterator<Item = f64> + Clone, side: f64) -> f64 {
    let sum: f64 = areas.clone().sum();
    let (min, max) = areas.fold((f64::INFINITY, 0.0_f64), |(lo, hi), a| {
        (lo.min(a), hi.max(a))
    });
    if sum <= 0.0 || min <= 0.0 {
        return f64::INFINITY;
    }
    let s2 = side * side;
    (s2 * max / (sum * sum)).max(sum * sum / (s2 * min))
}

/// Places one row along the shorter side of `free`; returns what is left of `free`.
fn lay_row(row: &[(usize, f64)], free: Rect, out: &mut [Rect]) -> Rect {
    let sum: f64 = row.iter().map(|r| r.1).sum();
    if free.w >= free.h {
        // A column at the left.
        let w = if free.h > 0.0 { sum / free.h } else { 0.0 };
        let mut y = free.y;
        for (i, a) in row {
            let h = if w > 0.0 { a / w } else { 0.0 };
            out[*i] = Rect::new(free.x, y, w, h);
            y += h;
        }
        Rect::new(free.x + w, free.y, (free.w - w).max(0.0), free.h)
    } else {
        // A row at the top.
        let h = if free.w > 0.0 { sum / free.w } else { 0.0 };
        let mut x = free.x;
        for (i, a) in row {
            let w = if h > 0.0 { a / h } else { 0.0 };
            out[*i] = Rect::new(x, free.y, w, h);
            x += w;
        }
        Rect::new(free.x, free.y + h, free.w, (free.h - h).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sizes: &[f64], bounds: Rect) -> Vec<Rect> {
        let rects = squarify(sizes, bounds);
        let total: f64 = sizes.iter().filter(|s| s.is_finite() && **s > 0.0).sum();
        for (s, r) in sizes.iter().zip(&rects) {
            let want = if s.is_finite() && *s > 0.0 {
                s / total * bounds.area()
            } else {
                0.0
            };
            assert!(
                (r.area() - want).abs() < 1e-6 * bounds.area(),
                "size {s}: area {} want {want}",
                r.area()
            );
            // Inside the bounds.
            assert!(r.x >= bounds.x - 1e-9 && r.y >= bounds.y - 1e-9);
            assert!(r.x + r.w <= bounds.x + bounds.w + 1e-6);
            assert!(r.y + r.h <= bounds.y + bounds.h + 1e-6);
        }
        rects
    }

    fn overlap(a: &Rect, b: &Rect) -> f64 {
        let w = (a.x + a.w).min(b.x + b.w) - a.x.max(b.x);
        let h = (a.y + a.h).min(b.y + b.h) - a.y.max(b.y);
        w.max(0.0) * h.max(0.0)
    }

    #[test]
    fn areas_are_proportional_and_rects_do_not_overlap() {
        let b = Rect::new(10.0, 20.0, 600.0, 400.0);
        for sizes in [
            vec![6.0, 6.0, 4.0, 3.0, 2.0, 2.0, 1.0],
            vec![100.0, 1.0, 1.0, 1.0],
            vec![5.0, 5.0],
            vec![1.0, 1000.0, 300.0, 0.0, 200.0, f64::NAN, 50.0, -3.0, 0.5],
            vec![7.0],
        ] {
            let rects = check(&sizes, b);
            for (i, a) in rects.iter().enumerate() {
                for c in &rects[i + 1..] {
                    assert!(overlap(a, c) < 1e-6, "{a:?} overlaps {c:?}");
                }
            }
        }
    }

    #[test]
    fn the_papers_example_is_squarish() {
        // Bruls et al., figure 3: 6 6 4 3 2 2 1 in a 6×4 rectangle.
        let rects = check(
            &[6.0, 6.0, 4.0, 3.0, 2.0, 2.0, 1.0],
            Rect::new(0.0, 0.0, 6.0, 4.0),
        );
        let worst = rects
            .iter()
            .map(|r| (r.w / r.h).max(r.h / r.w))
            .fold(0.0, f64::max);
        assert!(worst < 3.0, "worst aspect ratio {worst}");
        assert_eq!(rects[0], Rect::new(0.0, 0.0, 3.0, 2.0));
    }

    #[test]
    fn nothing_to_lay_out() {
        let b = Rect::new(0.0, 0.0, 10.0, 10.0);
        assert!(squarify(&[], b).is_empty());
        assert_eq!(squarify(&[0.0], b)[0].area(), 0.0);
        assert_eq!(
            squarify(&[1.0], Rect::new(0.0, 0.0, 0.0, 5.0))[0].area(),
            0.0
        );
    }
}
