import numpy as np
import pytest
from scipy import sparse

from skhpo.search.hyperlocal.lp import LinearProgram, LPSolverError, solve_lp


def random_lp(rng, rows=40, n=60, density=0.3):
    A = sparse.random(rows, n, density=density, random_state=rng.integers(1 << 31)).toarray()
    A[3] = 0.0  # an empty row, dropped by the preprocessing
    A[5] *= 1e5  # badly scaled rows are rescaled
    c = rng.normal(size=n)
    c[:4] = 0.0  # free variables with zero cost: the LP is degenerate
    return LinearProgram(c=c, A=A, delta=1e-2, lower=-1.0, upper=1.0)


def check_feasible(lp, x):
    assert np.all(x >= lp.lower - 1e-9) and np.all(x <= lp.upper + 1e-9)
    assert np.all(np.abs(lp.A @ x) <= lp.delta * (1 + 1e-6) + 1e-12)


def test_highs_solves_a_degenerate_lp_to_a_feasible_optimum():
    rng = np.random.default_rng(0)
    lp = random_lp(rng)
    sol = solve_lp(lp, seed=0)
    check_feasible(lp, sol.x)
    assert sol.n_rows == 39 and sol.n_vars == 60  # the empty row dropped
    # no feasible point does better: compare with an unperturbed solve of the raw LP
    from scipy.optimize import linprog
    A = lp.A.toarray()
    ref = linprog(lp.c, A_ub=np.vstack([A, -A]), b_ub=np.full(2 * A.shape[0], 1e-2),
                  bounds=(-1, 1), method="highs")
    assert sol.objective == pytest.approx(ref.fun, rel=1e-6, abs=1e-9)
    # deterministic: the same seed gives the same vertex
    np.testing.assert_array_equal(solve_lp(lp, seed=0).x, sol.x)


def test_highs_and_gurobi_return_the_same_vertex():
    pytest.importorskip("gurobipy")
    rng = np.random.default_rng(1)
    for _ in range(3):
        lp = random_lp(rng)
        a, b = solve_lp(lp, "highs", seed=0), solve_lp(lp, "gurobi", seed=0)
        assert a.objective == pytest.approx(b.objective, rel=1e-8, abs=1e-10)
        assert np.max(np.abs(a.x - b.x)) <= 1e-6
        check_feasible(lp, b.x)


def test_gurobi_size_limit_is_an_error_naming_highs():
    pytest.importorskip("gurobipy")
    n = 2500  # beyond the pip licence's 2,000 variables
    lp = LinearProgram(c=np.ones(n), A=sparse.eye(n), delta=1.0, lower=-1, upper=1)
    try:
        solve_lp(lp, "gurobi")
    except LPSolverError as exc:
        assert "licence" in str(exc) and 'lp_solver="highs"' in str(exc)
    else:  # a full licence is installed: nothing to check
        pytest.skip("gurobipy has an unrestricted licence here")


def test_bad_input():
    with pytest.raises(ValueError, match="lp_solver must be one of highs, gurobi"):
        solve_lp(LinearProgram(c=[1.0], A=[[1.0]], delta=1, lower=-1, upper=1), "glpk")
    with pytest.raises(ValueError, match="A has 2 columns but c has 1"):
        LinearProgram(c=[1.0], A=[[1.0, 2.0]], delta=1, lower=-1, upper=1)
    with pytest.raises(ValueError, match="lower <= upper"):
        LinearProgram(c=[1.0], A=[[1.0]], delta=1, lower=1, upper=-1)
    with pytest.raises(LPSolverError, match="HiGHS did not solve"):
        # infeasible: |x| <= 0.1 by the row but x >= 1 by the bounds
        solve_lp(LinearProgram(c=[1.0], A=[[1.0]], delta=0.1, lower=1, upper=2))
