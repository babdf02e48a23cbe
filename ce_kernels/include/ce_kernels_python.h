/*
 * ce_kernels from a C or C++ Python extension: the kernels' function table,
 * fetched from the installed package at import time, so the extension does
 * not link against ce_kernels' shared object.
 *
 *     #include "ce_kernels_python.h"
 *
 *     static const ce_kernels_api *ck;
 *
 *     PyMODINIT_FUNC PyInit_mymodule(void) {
 *         ck = ce_kernels_import();
 *         if (ck == NULL) return NULL;       // ImportError set
 *         ...
 *     }
 *
 *     // later, with or without the GIL, from any thread:
 *     ce_problem p;
 *     memset(&p, 0, sizeof p);
 *     ... fill p ...
 *     int status = ck->run(&p, n_threads);
 *
 * Compile with the include directory ce_kernels.get_include().
 */
#ifndef CE_KERNELS_PYTHON_H
#define CE_KERNELS_PYTHON_H

#include <Python.h>

#include "ce_kernels.h"

/* The table of the installed ce_kernels, or NULL with ImportError set when
 * it is missing or was built for another ABI version than this header.
 * Call it with the GIL held (once, at module initialisation). */
static inline const ce_kernels_api *ce_kernels_import(void)
{
    /* PyCapsule_Import only looks up attributes below the top-level
     * package, so the module holding the capsule is imported first. */
    PyObject *module = PyImport_ImportModule("ce_kernels.capi");
    if (module == NULL) return NULL;
    Py_DECREF(module);
    const ce_kernels_api *api =
        (const ce_kernels_api *)PyCapsule_Import(CE_KERNELS_CAPSULE_NAME, 0);
    if (api == NULL) return NULL;
    if (api->abi_version != CE_KERNELS_ABI_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "ce_kernels ABI version %d is installed, but this extension was "
                     "compiled against version %d: rebuild it against the installed "
                     "ce_kernels",
                     api->abi_version, CE_KERNELS_ABI_VERSION);
        return NULL;
    }
    return api;
}

#endif /* CE_KERNELS_PYTHON_H */
