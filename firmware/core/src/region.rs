//! Spatial structure of the predicted class map: the boundary band between classes and the
//! connected segments of one class. All maps are `[height, width]` row-major.

/// Label of a pixel that belongs to no segment (ignored by the ROI, or non-finite).
pub const NO_SEGMENT: u32 = u32::MAX;

/// Value of a horizontally mixed window in the band's scratch; no class id reaches it.
const MIXED: u32 = 256;

/// Marks the boundary band: `band[p] = 1` when the `(2k + 1) x (2k + 1)` window centred on `p`
/// (clipped to the frame) holds a class other than `p`'s, else 0. With `k = 0` nothing is band.
///
/// Equivalently, `p` is within Chebyshev distance `k` of a pixel of another class. The window
/// is uniform when every row of it is uniform and all rows have the same class, so a
/// horizontal pass reduces each pixel's row segment to its class (or `MIXED`), and a vertical
/// pass does the same on those values, in `scratch` (one `u32` per pixel).
///
/// Up to [`DIRECT_WIDTH`] both passes compare each pixel with its `2k` neighbours directly, row
/// against shifted row, which vectorizes; wider bands measure run lengths instead, whose cost
/// does not grow with `k`.
pub(crate) fn boundary_band(
    classes: &[u8],
    width: usize,
    k: u8,
    scratch: &mut [u32],
    band: &mut [u8],
) {
    match k {
        0 => band.fill(0),
        1 => band_direct::<1>(classes, width, scratch, band),
        2 => band_direct::<2>(classes, width, scratch, band),
        3 => band_direct::<3>(classes, width, scratch, band),
        4 => band_direct::<4>(classes, width, scratch, band),
        _ => band_runs(classes, width, k, scratch, band),
    }
}

/// Widest band [`boundary_band`] computes by direct comparisons.
const DIRECT_WIDTH: u8 = 4;

/// [`boundary_band`] for `k = K <= DIRECT_WIDTH`, by comparisons with the `2K` neighbours of each
/// pixel in a row, then in a column.
fn band_direct<const K: usize>(classes: &[u8], width: usize, scratch: &mut [u32], band: &mut [u8]) {
    const { assert!(K >= 1 && K <= DIRECT_WIDTH as usize) };
    // Horizontal: scratch[p] = p's class when its clipped row segment is uniform, else MIXED.
    for (row, out) in classes.chunks_exact(width).zip(scratch.chunks_exact_mut(width)) {
        for (slot, &class) in out.iter_mut().zip(row) {
            *slot = u32::from(class);
        }
        if width > 2 * K {
            // Away from the edges, row against row shifted by d either way: no clipping.
            let inner = K..width - K;
            let centre = &row[inner.clone()];
            let out = &mut out[inner];
            for d in 1..=K {
                let (left, right) = (&row[K - d..width - K - d], &row[K + d..width - K + d]);
                for (((slot, &c), &l), &r) in out.iter_mut().zip(centre).zip(left).zip(right) {
                    *slot = if l == c && r == c { *slot } else { MIXED };
                }
            }
        }
        // Near the edges, the neighbour index clamped into the row: the clamped neighbour lies
        // inside the clipped window, so the result is the same as with clipping.
        let edges = (0..K.min(width)).chain(width.saturating_sub(K).max(K.min(width))..width);
        for x in edges {
            let c = row[x];
            let uniform =
                (1..=K).all(|d| row[x.saturating_sub(d)] == c && row[(x + d).min(width - 1)] == c);
            out[x] = if uniform { u32::from(c) } else { MIXED };
        }
    }

    // Vertical: p is band when its row segment is mixed or a row within K above or below has
    // another value in p's column (another class, or MIXED).
    let height = classes.len() / width;
    for y in 0..height {
        let here = &scratch[y * width..(y + 1) * width];
        let out = &mut band[y * width..(y + 1) * width];
        for (b, &value) in out.iter_mut().zip(here) {
            *b = u8::from(value == MIXED);
        }
        let rows = (y.saturating_sub(K)..(y + K + 1).min(height)).filter(|&v| v != y);
        for v in rows {
            let other = &scratch[v * width..(v + 1) * width];
            for ((b, &value), &o) in out.iter_mut().zip(here).zip(other) {
                *b |= u8::from(value != o);
            }
        }
    }
}

/// [`boundary_band`] for any `k > 0` by run lengths. Each pass measures run lengths, saturated
/// at `k`, from both sides; the cost is O(height x width) whatever `k`.
///
/// `scratch` holds the horizontal result in its low 16 bits and the downward run length in its
/// high bits.
fn band_runs(classes: &[u8], width: usize, k: u8, scratch: &mut [u32], band: &mut [u8]) {
    let k32 = u32::from(k);

    // Horizontal: run length to the left (into `band`), then to the right, both saturated at
    // k and counting a frame edge as a long run.
    for ((row, left), out) in classes
        .chunks_exact(width)
        .zip(band.chunks_exact_mut(width))
        .zip(scratch.chunks_exact_mut(width))
    {
        let mut run = k;
        left[0] = k;
        for x in 1..width {
            run = if row[x] == row[x - 1] { run.saturating_add(1).min(k) } else { 0 };
            left[x] = run;
        }

        let mut run = k;
        for x in (0..width).rev() {
            if x + 1 < width {
                run = if row[x] == row[x + 1] { run.saturating_add(1).min(k) } else { 0 };
            }
            let uniform = left[x] >= k && run >= k;
            out[x] = if uniform { u32::from(row[x]) } else { MIXED };
        }
    }

    // Vertical, top-down: run length upwards of equal, uniform values, into `band`.
    let height = classes.len() / width;
    band[..width].fill(k);
    for y in 1..height {
        let (above, here) = scratch[(y - 1) * width..(y + 1) * width].split_at(width);
        let (up_above, up_here) = band[(y - 1) * width..(y + 1) * width].split_at_mut(width);
        for (((up, &previous), &value), &v_above) in
            up_here.iter_mut().zip(&*up_above).zip(here).zip(above)
        {
            let same = value == v_above && value != MIXED;
            *up = if same { previous.saturating_add(1).min(k) } else { 0 };
        }
    }

    // Vertical, bottom-up: run length downwards, kept in the high bits of `scratch`; a pixel
    // is band when its row segment is mixed or either vertical run is shorter than k.
    for y in (0..height).rev() {
        let (here, below) = scratch[y * width..].split_at_mut(width);
        let band_row = &mut band[y * width..(y + 1) * width];
        if y + 1 == height {
            for (value, b) in here.iter_mut().zip(band_row.iter_mut()) {
                *value |= k32 << 16;
                *b = u8::from(*value & 0xffff == MIXED || *b < k);
            }
            continue;
        }
        for ((value, &under), b) in here.iter_mut().zip(&below[..width]).zip(band_row.iter_mut()) {
            let class = *value & 0xffff;
            let same = class == under & 0xffff && class != MIXED;
            let down = if same { ((under >> 16) + 1).min(k32) } else { 0 };
            *value = class | (down << 16);
            *b = u8::from(class == MIXED || *b < k || down < k32);
        }
    }
}

/// Links each included pixel to an earlier 8-neighbour of the same class: afterwards
/// `labels[p]` is a parent index `<= p` of a union-find forest whose roots (`labels[r] = r`)
/// are the first pixel, in row-major order, of each 8-connected segment; excluded pixels get
/// [`NO_SEGMENT`].
///
/// Parents always point to smaller indices, so one row-major pass can later turn the forest
/// into dense segment ids (see `stats::analyze`).
pub(crate) fn link_segments(
    classes: &[u8],
    width: usize,
    included: impl Fn(usize) -> bool,
    labels: &mut [u32],
) {
    let height = classes.len() / width;
    for y in 0..height {
        for x in 0..width {
            let p = y * width + x;
            if !included(p) {
                labels[p] = NO_SEGMENT;
                continue;
            }

            // Whether an earlier neighbour is in p's segment: included and of p's class.
            let class = classes[p];
            let joins = |labels: &[u32], q: usize| labels[q] != NO_SEGMENT && classes[q] == class;

            // p takes the parent of the neighbour it joins rather than the neighbour itself
            // (the same tree, an index at least as small): pointing at the neighbour would
            // chain a column of pixels one below the other, and `find` would walk the chain.

            // The up neighbour touches every other earlier neighbour, so when it joins it
            // already shares a tree with all of them: the common case, decided first and alone.
            if y > 0 && joins(labels, p - width) {
                labels[p] = labels[p - width];
                continue;
            }

            // Otherwise the left (or, failing it, the up-left) neighbour and the up-right one
            // may belong to different trees that p now joins.
            let left = if x > 0 && joins(labels, p - 1) {
                Some(p - 1)
            } else if y > 0 && x > 0 && joins(labels, p - width - 1) {
                Some(p - width - 1)
            } else {
                None
            };
            let up_right = y > 0 && x + 1 < width && joins(labels, p - width + 1);
            labels[p] = match (left, up_right) {
                (Some(q), true) => {
                    union(labels, q, p - width + 1);
                    labels[q]
                }
                (Some(q), false) => labels[q],
                (None, true) => labels[p - width + 1],
                (None, false) => p as u32,
            };
        }
    }
}

/// Root of `x`, halving the path on the way (every node then points to its grandparent).
#[inline]
fn find(labels: &mut [u32], mut x: usize) -> usize {
    while labels[x] as usize != x {
        let grandparent = labels[labels[x] as usize];
        labels[x] = grandparent;
        x = grandparent as usize;
    }
    x
}

/// Joins the trees of `a` and `b`, making the smaller root the parent.
#[inline]
fn union(labels: &mut [u32], a: usize, b: usize) {
    let (ra, rb) = (find(labels, a), find(labels, b));
    if ra != rb {
        let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
        labels[high] = low as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Band by its definition: any pixel of another class within Chebyshev distance k.
    fn reference_band(classes: &[u8], width: usize, k: usize) -> Vec<u8> {
        let height = classes.len() / width;
        let mut band = vec![0; classes.len()];
        for y in 0..height {
            for x in 0..width {
                let c = classes[y * width + x];
                let ys = y.saturating_sub(k)..(y + k + 1).min(height);
                let differs = ys.flat_map(|v| {
                    (x.saturating_sub(k)..(x + k + 1).min(width)).map(move |u| (v, u))
                });
                band[y * width + x] =
                    u8::from(differs.into_iter().any(|(v, u)| classes[v * width + u] != c));
            }
        }
        band
    }

    proptest::proptest! {
        #[test]
        fn band_matches_definition(
            width in 1usize..=12,
            height in 1usize..=12,
            k in 0u8..=7,
            seed in proptest::collection::vec(0u8..3, 144),
        ) {
            let classes = &seed[..width * height];
            let mut scratch = vec![0; classes.len()];
            let mut band = vec![9; classes.len()];
            boundary_band(classes, width, k, &mut scratch, &mut band);
            proptest::prop_assert_eq!(band, reference_band(classes, width, usize::from(k)));
        }
    }
}
