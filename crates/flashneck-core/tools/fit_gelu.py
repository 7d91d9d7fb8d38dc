#!/usr/bin/env python3
"""Fit SPEC §3's rational form to GELU on [-3, 3]; prints the coefficients for grkan_init.rs.

    y(x) = (a0 + a1 x + ... + a5 x^5) / (1 + |b1| |x| + ... + |b4| |x|^4)

Run once: /opt/torchenv/bin/python crates/flashneck-core/tools/fit_gelu.py (needs numpy).
Method: a linearised least-squares start (P - f*S = f is linear in a and |b|), then
Levenberg-Marquardt on the weighted residual P/Q - f, with Lawson's reweighting (weights grow
where the error is largest) to push the fit towards minimax. The max error is measured on a
grid of 60001 points with the coefficients rounded to f32, as the Rust test does.
"""
import math
import numpy as np

M, N = 5, 4
xs = np.linspace(-3.0, 3.0, 6001)
gelu = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in xs])


def model(theta, x):
    a, b = theta[: M + 1], theta[M + 1 :]
    p = sum(a[i] * x**i for i in range(M + 1))
    q = 1.0 + sum(abs(b[j]) * np.abs(x) ** (j + 1) for j in range(N))
    return p / q


def jacobian(theta, x):
    a, b = theta[: M + 1], theta[M + 1 :]
    p = sum(a[i] * x**i for i in range(M + 1))
    q = 1.0 + sum(abs(b[j]) * np.abs(x) ** (j + 1) for j in range(N))
    cols = [x**i / q for i in range(M + 1)]
    cols += [-p / q**2 * np.sign(b[j] if b[j] != 0 else 1.0) * np.abs(x) ** (j + 1) for j in range(N)]
    return np.stack(cols, axis=1)


# Linear start: P(x) - f(x) * S(|x|) = f(x).
A = np.stack([xs**i for i in range(M + 1)] + [-gelu * np.abs(xs) ** (j + 1) for j in range(N)], axis=1)
theta = np.linalg.lstsq(A, gelu, rcond=None)[0]

w = np.ones_like(xs) / len(xs)
best = (np.inf, theta.copy())
for outer in range(60):
    lam = 1e-3
    for it in range(60):
        r = model(theta, xs) - gelu
        J = jacobian(theta, xs)
        sw = np.sqrt(w)
        Jw, rw = J * sw[:, None], r * sw
        H = Jw.T @ Jw
        step = np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-18), -Jw.T @ rw)
        cand = theta + step
        if np.sum(w * (model(cand, xs) - gelu) ** 2) < np.sum(w * r**2):
            theta, lam = cand, lam * 0.3
        else:
            lam *= 10.0
    err = np.abs(model(theta, xs) - gelu)
    if err.max() < best[0]:
        best = (err.max(), theta.copy())
    # Lawson: weight the points where the error is large.
    w = w * (err + 1e-12)
    w /= w.sum()

theta = best[1].astype(np.float32).astype(np.float64)
fine = np.linspace(-3.0, 3.0, 60001)
ref = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in fine])
print("max |error| on [-3, 3] (f32 coefficients, f64 evaluation): %.3e" % np.abs(model(theta, fine) - ref).max())
print("a =", ", ".join(repr(float(np.float32(v))) for v in theta[: M + 1]))
print("b =", ", ".join(repr(float(np.float32(v))) for v in theta[M + 1 :]))
