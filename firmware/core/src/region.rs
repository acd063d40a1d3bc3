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
/// pass does the same on those values. Each pass measures run lengths, saturated at `k`, from
/// both sides; the cost is O(height x width) whatever `k`.
///
/// `scratch` (one `u32` per pixel) holds the horizontal result in its low 16 bits and the
/// downward run length in its high bits.
pub(crate) fn boundary_band(
    classes: &[u8],
    width: usize,
    k: u8,
    scratch: &mut [u32],
    band: &mut [u8],
) {
    if k == 0 {
        band.fill(0);
        return;
    }
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
        for x in 0..width {
            let same = here[x] == above[x] && here[x] != MIXED;
            up_here[x] = if same { up_above[x].saturating_add(1).min(k) } else { 0 };
        }
    }

    // Vertical, bottom-up: run length downwards, kept in the high bits of `scratch`; a pixel
    // is band when its row segment is mixed or either vertical run is shorter than k.
    for y in (0..height).rev() {
        for x in 0..width {
            let p = y * width + x;
            let value = scratch[p] & 0xffff;
            let down = if y + 1 == height {
                k32
            } else {
                let below = scratch[p + width];
                let same = value == below & 0xffff && value != MIXED;
                if same { ((below >> 16) + 1).min(k32) } else { 0 }
            };
            scratch[p] = value | (down << 16);
            band[p] = u8::from(value == MIXED || band[p] < k || down < k32);
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
    for p in 0..classes.len() {
        if !included(p) {
            labels[p] = NO_SEGMENT;
            continue;
        }
        labels[p] = p as u32;

        // The neighbours already visited: left, up-left, up, up-right.
        let (x, y) = (p % width, p / width);
        let mut neighbours = [None; 4];
        if x > 0 {
            neighbours[0] = Some(p - 1);
        }
        if y > 0 {
            let above = p - width;
            neighbours[1] = (x > 0).then(|| above - 1);
            neighbours[2] = Some(above);
            neighbours[3] = (x + 1 < width).then_some(above + 1);
        }

        for q in neighbours.into_iter().flatten() {
            if labels[q] != NO_SEGMENT && classes[q] == classes[p] {
                union(labels, p, q);
            }
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
            k in 0u8..=4,
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
