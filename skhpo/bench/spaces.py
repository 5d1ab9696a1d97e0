"""Search-space helpers shared by the benchmark protocols."""

__all__ = ["PerLayer"]


class PerLayer:
    """A distribution of one value per layer (``rvs`` returns a list), for
    RandomizedSearchCV over ``dropout`` sequences."""

    def __init__(self, dist, n):
        self.dist, self.n = dist, n

    def rvs(self, random_state=None):
        return [float(self.dist.rvs(random_state=random_state)) for _ in range(self.n)]
