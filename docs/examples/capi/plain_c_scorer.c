/* A downstream C extension: fetches ce_kernels' function table at import
 * (no link against ce_kernels) and computes per-row losses of float32
 * logits with it, the GIL released during the call. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "ce_kernels_python.h"

static const ce_kernels_api *ck;

/* row_losses(logits, target, loss, n_rows, n_cols, n_threads) -> status:
 * logits a contiguous float32 buffer, target int64, loss float64 (written). */
static PyObject *row_losses(PyObject *self, PyObject *args)
{
    Py_buffer x, t, loss;
    long long n_rows, n_cols;
    int n_threads, status;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*LLi", &x, &t, &loss, &n_rows, &n_cols, &n_threads))
        return NULL;
    if (x.len != n_rows * n_cols * 4 || t.len != n_rows * 8 || loss.len != n_rows * 8) {
        PyBuffer_Release(&x); PyBuffer_Release(&t); PyBuffer_Release(&loss);
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match the shape");
        return NULL;
    }
    ce_problem p;
    memset(&p, 0, sizeof p);
    p.dtype = CE_FLOAT32;
    p.mode = CE_MODE_LOSS;
    p.n_rows = n_rows;
    p.n_cols = n_cols;
    p.x = x.buf;
    p.x_stride = n_cols;
    p.target = (const int64_t *)t.buf;
    p.ignore_index = -100;
    p.weight_sum = (double)n_cols;
    p.grad_scale = 1.0;
    p.row_out = (double *)loss.buf;
    Py_BEGIN_ALLOW_THREADS
    status = ck->run(&p, n_threads);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x); PyBuffer_Release(&t); PyBuffer_Release(&loss);
    return PyLong_FromLong(status);
}

static PyMethodDef methods[] = {
    {"row_losses", row_losses, METH_VARARGS, "Per-row cross-entropy through ce_kernels."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "plain_c_scorer", NULL, -1, methods};

PyMODINIT_FUNC PyInit_plain_c_scorer(void)
{
    ck = ce_kernels_import();
    if (ck == NULL) return NULL;
    return PyModule_Create(&module);
}
