"""``exp`` and ``log`` that give the same bits on every CPU, for the deterministic stages.

numpy picks its ``exp``/``log`` kernels by CPU at run time: the AVX-512 (``X86_V4``) kernels and
the scalar C library's differ in the last bit for some arguments, and glibc's own ``exp`` has FMA
and non-FMA variants that differ too. A stage declared byte-exact on any machine
(``soft_labels``) therefore cannot call them. The functions here evaluate the classic fdlibm
algorithms (Sun Microsystems' freely distributable libm, ``e_exp.c`` and ``e_log.c``: argument
reduction plus a fixed polynomial, error below 1 ulp) with numpy's element-wise ``+ - * /``,
``rint``, ``frexp`` and ``ldexp`` only. Those are correctly rounded (or exact) by IEEE 754 whatever
the SIMD width, and each numpy call rounds once (no fused multiply-add), so the result depends on
the input bits alone. They cost about 10 numpy passes over the array each (numbers in
``BENCHMARKS.md``, "Soft labels").
"""

from __future__ import annotations

import numpy as np

# fdlibm e_exp.c
_LN2_HI = 6.93147180369123816490e-01  # 0x3fe62e42fee00000: k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10  # 0x3dea39ef35793c76
_INV_LN2 = 1.44269504088896338700e00
_P = (
    1.66666666666666019037e-01,
    -2.77777777770155933842e-03,
    6.61375632143793436117e-05,
    -1.65339022054652515390e-06,
    4.13813679705723846039e-08,
)

# fdlibm e_log.c
_LG = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)
_SQRT_HALF = 0.7071067811865476
_ROUND = 1.5 * 2.0**52  # adding it rounds |v| < 2^51 to an integer (the current rounding mode)
_ROUND_BITS = np.float64(_ROUND).view(np.int64)


def exp(x: np.ndarray | float, out: np.ndarray | None = None, work: np.ndarray | None = None) -> np.ndarray:
    """``e**x`` element-wise, the same bits on every CPU (fdlibm's algorithm, error < 1 ulp).

    ``inf``, ``-inf`` and NaN give ``inf``, ``0`` and NaN. ``out`` (a float64 array of x's shape,
    may be ``x`` itself) receives the result. ``work``: scratch space, a float64 array of shape
    ``(5,) + x.shape`` (:func:`exp_work`), for callers that call this in a loop: fresh temporaries
    of a large block cost more than the arithmetic (each is new memory to map).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim == 0:
        return exp(x.reshape(1))[0]
    work = exp_work(x.shape) if work is None else work
    k, hi, t, c = work[0], work[1], work[2], work[3]
    k_int = work[4].view(np.int64)
    # beyond these e**x is inf or 0 whatever the rest; NaN passes through every step
    r = np.clip(x, -746.0, 710.0, out=out if out is not None else np.empty_like(x))
    np.multiply(r, _INV_LN2, out=k)
    k += _ROUND  # rounds k to an integer, which the low bits of k's float now hold
    with np.errstate(invalid="ignore"):
        np.subtract(k.view(np.int64), _ROUND_BITS, out=k_int)
    k -= _ROUND
    np.multiply(k, _LN2_HI, out=hi)
    np.subtract(r, hi, out=hi)  # exact (Cody-Waite)
    lo = np.multiply(k, _LN2_LO, out=k)
    np.subtract(hi, lo, out=r)  # the reduced argument, |r| <= ln2 / 2
    np.multiply(r, r, out=t)
    np.multiply(t, _P[4], out=c)
    for p in _P[3::-1]:
        c += p
        c *= t
    np.subtract(r, c, out=c)  # c = r - t (P1 + t (P2 + ...))
    np.multiply(r, c, out=r)
    np.subtract(2.0, c, out=c)
    np.divide(r, c, out=r)
    np.subtract(lo, r, out=r)
    r -= hi
    np.subtract(1.0, r, out=r)  # e**r = 1 - ((lo - r c / (2 - c)) - hi), in [0.7, 1.5)
    return _scale(r, k_int, t.view(np.int64))


def exp_work(shape: tuple[int, ...]) -> np.ndarray:
    """Scratch space for :func:`exp` on arrays of ``shape``."""
    return np.empty((5, *shape))


def _scale(y: np.ndarray, k: np.ndarray, half: np.ndarray) -> np.ndarray:
    """``y * 2**k`` in place, rounded once (as ``np.ldexp``, which costs as much as ``np.exp``).

    The factor is built from its exponent bits; where ``2**k`` is no normal number it is applied
    in two halves, the first exact, so that a subnormal or overflowing result is rounded once.
    ``half``: int64 scratch of k's shape.
    """
    if k.size and k.min() >= -1022 and k.max() <= 1023:
        k += 1023
        k <<= 52
        y *= k.view(np.float64)
        return y
    np.right_shift(k, 1, out=half)
    k -= half
    for part in (half, k):
        np.clip(part, -1022, 1023, out=part)  # NaN's k only: any value keeps NaN
        part += 1023
        part <<= 52
        with np.errstate(over="ignore", under="ignore"):
            y *= part.view(np.float64)
    return y


def log(x: np.ndarray | float) -> np.ndarray:
    """Natural logarithm element-wise, the same bits on every CPU (fdlibm's algorithm).

    ``log(0) = -inf``, ``log(inf) = inf``; negative numbers and NaN give NaN. fdlibm switches
    between two equivalent final formulas by the mantissa for the last fraction of an ulp; this
    uses the first one throughout (error still about 1 ulp).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim == 0:
        return log(x.reshape(1))[0]
    special = ~((x > 0) & (x < np.inf))
    v = np.where(special, 1.0, x)
    mantissa, k = np.frexp(v)  # v = mantissa 2^k, mantissa in [0.5, 1): exact
    low = mantissa < _SQRT_HALF
    mantissa = np.where(low, mantissa * 2.0, mantissa)  # now in [sqrt(1/2), sqrt(2)): exact
    dk = (k - low).astype(float)
    f = mantissa - 1.0  # exact (Sterbenz)
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG[1] + w * (_LG[3] + w * _LG[5]))
    t2 = z * (_LG[0] + w * (_LG[2] + w * (_LG[4] + w * _LG[6])))
    hfsq = 0.5 * f * f
    result = dk * _LN2_HI - ((hfsq - (s * (hfsq + (t1 + t2)) + dk * _LN2_LO)) - f)
    if special.any():
        xs = x[special]
        result[special] = np.where(xs == 0, -np.inf, np.where(xs == np.inf, np.inf, np.nan))
    return result
