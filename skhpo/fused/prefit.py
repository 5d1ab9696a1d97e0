"""Cross-validation with fused training: the fits a search hands to scikit-learn load what the
fused engine already trained.

A search trains every (candidate, fold) task in fused groups first, then gives scikit-learn's
``evaluate_candidates`` each candidate with a :class:`PrefitStates` callback that holds the
candidate's trained folds, keyed by a fingerprint of the training data the net receives. When
scikit-learn fits the candidate on a fold, the callback finds that fold's state when training
begins, loads the weights, the Adam state and the history, and lets the fit run zero epochs;
scoring, ``cv_results_``, multi-metric scoring and ``error_score`` stay scikit-learn's. A fit
whose data matches no stored fold (another split, a transformer that fits differently) simply
trains: correct by construction, only slower.
"""

import hashlib

import numpy as np
from skorch.callbacks import Callback

from ..nets import input_dict, load_net_state, net_state

__all__ = ["PrefitStates", "SharedStates", "fingerprint", "net_state"]


class SharedStates(dict):
    """The trained folds of one candidate, shared, not copied, by ``copy.deepcopy`` (so by
    scikit-learn's ``clone`` of the net that holds them: every CV fit of the candidate clones
    it). Read-only by use: loading a state copies it into the net."""

    def __deepcopy__(self, memo):
        return self


def fingerprint(X, y):
    """A digest of the training data a net receives (its validated X, a dict of inputs part by
    part, and its encoded y)."""
    digest = hashlib.sha1()
    parts = [X[k] for k in sorted(X)] if input_dict(X) else [X]
    for a in (*parts, y):
        a = np.ascontiguousarray(np.asarray(a))
        digest.update(str((a.dtype, a.shape)).encode())
        # its bytes, without copying them (an object array's as before: its pointers)
        digest.update(a.tobytes() if a.dtype.hasobject else a.reshape(-1).view(np.uint8))
    return digest.hexdigest()


class PrefitStates(Callback):
    """Load a trained fold instead of training it.

    Parameters
    ----------
    states : dict
        ``fingerprint -> {"module": state_dict, "optimizer": state_dict, "history": [rows]}``
        for each fold the fused engine trained (a fold that failed there is not stored: its
        fit trains and fails as usual, and ``error_score`` applies).
    checkpoint : skhpo.checkpoint.Checkpoint or None
        Where a fit that trains (its fold is not in ``states``) writes its trained state when
        it ends, under ``prefix`` and its data's fingerprint, so that a resumed search finds
        it (:meth:`~skhpo.checkpoint.Checkpoint.find`).
    prefix : str or None
        The candidate's key in ``checkpoint``.
    """

    def __init__(self, states, checkpoint=None, prefix=None):
        self.states = states
        self.checkpoint = checkpoint
        self.prefix = prefix

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.loaded_, self.key_ = None, None
        if X is None or y is None:
            return
        try:
            key = fingerprint(X, y)
        except (TypeError, ValueError):
            return
        state = self.states.get(key)
        if state is None:
            self.key_ = key  # it trains here: written when it ends
            return
        load_net_state(net, state)
        self.loaded_ = net.max_epochs
        net.max_epochs = 0  # skorch reads max_epochs after on_train_begin

    def on_train_end(self, net, **kwargs):
        if getattr(self, "loaded_", None) is not None:
            net.max_epochs = self.loaded_
            net.module_.eval()
        elif self.checkpoint is not None and getattr(self, "key_", None) is not None:
            self.checkpoint.save("fit", f"{self.prefix}-{self.key_}",
                                 {"key": self.key_, "state": net_state(net)})
