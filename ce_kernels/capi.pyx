# cython: language_level=3
"""The kernels for other extensions: ``cimport`` this module from Cython
(see ``capi.pxd``), or fetch ``_C_API`` (a capsule holding the versioned
table ``ce_kernels_api`` of ``ce_kernels.h``) from C with
``ce_kernels_import()`` of ``ce_kernels_python.h``. The table comes from
the compiled kernels in ``ce_kernels._core``; this module only passes it on,
so every caller shares one copy of the kernels and their settings.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer

from ce_kernels._cdefs cimport CE_KERNELS_CAPSULE_NAME

from ce_kernels._core import _C_API

cdef const ce_kernels_api *table = <const ce_kernels_api *>PyCapsule_GetPointer(
    _C_API, CE_KERNELS_CAPSULE_NAME)
if table.abi_version != CE_KERNELS_ABI_VERSION:
    raise ImportError(
        f"ce_kernels.capi was built for ABI version {CE_KERNELS_ABI_VERSION} but the "
        f"kernels have {table.abi_version}: reinstall ce_kernels")

#: The ABI version of the installed kernels (``CE_KERNELS_ABI_VERSION``).
ABI_VERSION = table.abi_version


cdef int run_abi(int abi_version, const ce_problem *problem, int n_threads) noexcept nogil:
    if abi_version != table.abi_version:
        return CE_ERR_ABI
    return table.run(problem, n_threads)


cdef int default_threads() noexcept nogil:
    return table.default_threads()


cdef int max_threads() noexcept nogil:
    return table.max_threads()


cdef int abi_version() noexcept nogil:
    return table.abi_version
