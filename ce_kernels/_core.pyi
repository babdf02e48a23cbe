"""Type stubs of the compiled bridge (ce_kernels/_core.pyx)."""
from typing import Dict, Optional, Tuple

import numpy as np

MODE_LOSS: int
MODE_LOSS_GRAD: int
MODE_LOGSUMEXP: int
MODE_SOFTMAX: int
MODE_LOG_SOFTMAX: int
MODE_TOKEN_STATS: int
MODE_ROW_STATS: int
MODE_GRAD_FROM_LSE: int
ROW_STATS_FIELDS: Tuple[str, ...]
DTYPE_FLOAT32: int
DTYPE_FLOAT64: int
DTYPE_FLOAT16: int
DTYPE_BFLOAT16: int
DIST_ENTROPY: int
DIST_CROSS_ENTROPY: int
DIST_KL: int
BCE_LOGITS: int
BCE_PROBS: int
SIGMOID: int
LOG_SIGMOID: int
DISTILL_FORWARD: int
DISTILL_REVERSE: int
DISTILL_JSD: int
ISA_NAMES: Dict[int, str]

def run(mode: int, dtype: int, x: np.ndarray, *, out: Optional[np.ndarray] = ...,
        target: Optional[np.ndarray] = ..., ignore_index: int = ...,
        soft: Optional[np.ndarray] = ..., weight: Optional[np.ndarray] = ...,
        weight_sum: Optional[float] = ..., smoothing: float = ..., grad_scale: float = ...,
        row_scale: Optional[np.ndarray] = ..., row_out: Optional[np.ndarray] = ...,
        n_threads: int = ..., z_loss: float = ..., softcap: float = ...,
        row_entropy: Optional[np.ndarray] = ...,
        row_argmax: Optional[np.ndarray] = ..., row_lse: Optional[np.ndarray] = ...,
        vocab_start: int = ..., vocab_size: int = ...,
        row_stats: Optional[np.ndarray] = ..., lse_in: Optional[np.ndarray] = ...) -> None: ...
def merge_row_stats(parts: np.ndarray, out: np.ndarray) -> None: ...
def finish_row_stats(stats: np.ndarray, target: np.ndarray, *, ignore_index: int = ...,
                     weight_sum: float, smoothing: float = ..., z_loss: float = ...,
                     vocab_size: int, row_out: Optional[np.ndarray] = ...,
                     row_lse: Optional[np.ndarray] = ...,
                     row_argmax: Optional[np.ndarray] = ...) -> None: ...
def check_targets(target: np.ndarray, n_classes: int, ignore_index: int,
                  weight: Optional[np.ndarray]) -> Tuple[int, int, float]: ...
def dist_run(mode: int, dtype: int, p: np.ndarray, q: Optional[np.ndarray] = ..., *,
             row_out: np.ndarray, p_sum: Optional[np.ndarray] = ...,
             q_sum: Optional[np.ndarray] = ..., p_negative: Optional[np.ndarray] = ...,
             q_negative: Optional[np.ndarray] = ..., n_threads: int = ...) -> None: ...
def bce_run(mode: int, dtype: int, x: np.ndarray, y: np.ndarray, *,
            weight: Optional[np.ndarray] = ..., pos_weight: Optional[np.ndarray] = ...,
            grad_output: Optional[np.ndarray] = ..., grad_scale: float = ...,
            elem_out: Optional[np.ndarray] = ..., row_out: Optional[np.ndarray] = ...,
            grad: Optional[np.ndarray] = ..., n_threads: int = ...) -> None: ...
def sigmoid_run(mode: int, dtype: int, x: np.ndarray, out: np.ndarray, *,
                n_threads: int = ...) -> None: ...
def distill_run(mode: int, dtype: int, student: np.ndarray, teacher: np.ndarray, *,
                temperature: float, beta: float = ..., target: Optional[np.ndarray] = ...,
                ignore_index: int = ..., row_out: np.ndarray, grad: Optional[np.ndarray] = ...,
                grad_scale: float = ..., n_threads: int = ...) -> None: ...
def log_array(x: np.ndarray, y: np.ndarray) -> None: ...
def log_f32_max_ulp(first: int, last: int) -> float: ...
def default_threads() -> int: ...
def openmp_enabled() -> bool: ...
def active_isa() -> str: ...
def best_isa() -> str: ...
def force_isa(name: str) -> bool: ...
def chunk_size() -> int: ...
def parallel_threshold() -> int: ...
def exp_array(x: np.ndarray, y: np.ndarray) -> None: ...
def floor_read(x: np.ndarray, n_threads: int) -> float: ...
def floor_copy(x: np.ndarray, y: np.ndarray, n_threads: int) -> None: ...
def floor_update(x: np.ndarray, factor: float, n_threads: int) -> None: ...

_C_API: object

def max_threads() -> int: ...
