"""Type stubs of ce_kernels.capi (the kernels' table for other extensions)."""

ABI_VERSION: int
_C_API: object
