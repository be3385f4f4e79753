//! Exact allocation of an amount of money into parts proportional to weights.
//!
//! Splitting a capture between the merchant, split payees and the application fee, or scaling
//! them down for a partial capture or a refund, must never create or lose a minor unit. The
//! largest-remainder (Hamilton) method gives every part the floor of its exact share and hands
//! the few units left over to the parts with the largest fractional remainders, so the parts
//! always sum to the total and each is within one unit of its exact share. Integer arithmetic
//! only (`i128` inside), and ties are broken by position, so the result is deterministic.

/// Splits `total` into parts proportional to `weights`, summing exactly to `total`.
///
/// Each part is the floor or the ceiling of `total * weight / Σweights`; the units left after
/// flooring go to the largest remainders, ties to the earliest index. A zero weight gets zero.
///
/// `None` when `total` is negative, `weights` is empty, a weight is negative, or all weights
/// are zero while `total` is positive (all-zero weights with a zero total give all zeros).
///
/// When `total <= Σweights`, every part is at most its weight. Proof: the exact share
/// `q = total * w / Σw` is then at most `w`. A part is `floor(q)` or, only when the remainder is
/// positive (so `q` is not an integer), `floor(q) + 1 = ceil(q)`. Since `w` is an integer and
/// `w >= q`, `w >= ceil(q)`, hence `part <= w` in both cases. (That only positive remainders
/// receive a unit follows from the number of leftover units being `Σ remainder / Σw`, a sum of
/// terms each below one, so it is below the count of positive remainders.)
pub fn allocate(total: i64, weights: &[i64]) -> Option<Vec<i64>> {
    if total < 0 || weights.is_empty() || weights.iter().any(|&w| w < 0) {
        return None;
    }
    let sum: i128 = weights.iter().map(|&w| i128::from(w)).sum();
    if sum == 0 {
        return (total == 0).then(|| vec![0; weights.len()]);
    }
    let total = i128::from(total);
    // total * w < 2^63 * 2^63 = 2^126: no overflow in i128.
    let (mut parts, remainders): (Vec<i128>, Vec<i128>) = weights
        .iter()
        .map(|&w| {
            let exact = total * i128::from(w);
            (exact / sum, exact % sum)
        })
        .unzip();
    let leftover = usize::try_from(total - parts.iter().sum::<i128>()).ok()?;
    for i in largest_first(&remainders).into_iter().take(leftover) {
        parts[i] += 1;
    }
    parts.into_iter().map(|p| i64::try_from(p).ok()).collect()
}

/// Indices ordered by remainder, largest first; the sort is stable so ties keep index order.
fn largest_first(remainders: &[i128]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..remainders.len()).collect();
    order.sort_by(|&a, &b| remainders[b].cmp(&remainders[a]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly_and_gives_leftovers_to_the_largest_remainders() {
        assert_eq!(allocate(100, &[1, 1, 1]), Some(vec![34, 33, 33]));
        assert_eq!(allocate(101, &[1, 1, 1]), Some(vec![34, 34, 33]));
        assert_eq!(allocate(10, &[3, 7]), Some(vec![3, 7]));
        // Exact shares 1.666…, 3.333…: remainders 2/3 and 1/3, the leftover goes to the first.
        assert_eq!(allocate(5, &[1, 2]), Some(vec![2, 3]));
        // Exact shares 0.5, 1.5, 3: equal remainders, the earliest wins.
        assert_eq!(allocate(5, &[1, 3, 6]), Some(vec![1, 1, 3]));
    }

    #[test]
    fn zero_weights_and_zero_totals() {
        assert_eq!(allocate(7, &[0, 5, 0]), Some(vec![0, 7, 0]));
        assert_eq!(allocate(0, &[3, 4]), Some(vec![0, 0]));
        assert_eq!(allocate(0, &[0, 0]), Some(vec![0, 0]));
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(allocate(1, &[]), None);
        assert_eq!(allocate(0, &[]), None);
        assert_eq!(allocate(-1, &[1]), None);
        assert_eq!(allocate(1, &[1, -1]), None);
        assert_eq!(allocate(1, &[0, 0]), None);
    }

    #[test]
    fn parts_do_not_exceed_weights_when_the_total_fits() {
        let weights = [1, 1, 1, 0, 5];
        for total in 0..=8 {
            let parts = allocate(total, &weights).expect("allocates");
            assert!(parts.iter().zip(weights).all(|(p, w)| *p <= w), "{total}: {parts:?}");
        }
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        assert_eq!(
            allocate(i64::MAX, &[i64::MAX, i64::MAX]),
            Some(vec![i64::MAX / 2 + 1, i64::MAX / 2])
        );
        assert_eq!(allocate(i64::MAX, &[1, i64::MAX - 1]), Some(vec![1, i64::MAX - 1]));
        assert_eq!(allocate(3, &[i64::MAX, i64::MAX, i64::MAX]), Some(vec![1, 1, 1]));
    }
}
