//! GR-KAN coefficient initialisers (SPEC §3).

/// Identity: `a = [0, 1, 0, …]`, `b = 0`, so `y = x`. Returns `(a [G, M+1], b [G, N])`.
pub fn identity(groups: usize, num_degree: usize, den_degree: usize) -> (Vec<f32>, Vec<f32>) {
    let mut a = vec![0.0f32; groups * (num_degree + 1)];
    if num_degree >= 1 {
        for g in 0..groups {
            a[g * (num_degree + 1) + 1] = 1.0;
        }
    }
    (a, vec![0.0f32; groups * den_degree])
}
