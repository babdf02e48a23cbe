"""Builds the two downstream examples against the installed ce_kernels:
python setup.py build_ext --inplace"""
import sys

import ce_kernels
from Cython.Build import cythonize
from setuptools import Extension, setup

# prange runs the batches on OpenMP threads where the compiler has OpenMP.
openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []

setup(
    name="ce-kernels-downstream-examples",
    ext_modules=cythonize([
        Extension("batch_scorer", ["batch_scorer.pyx"], include_dirs=[ce_kernels.get_include()],
                  extra_compile_args=openmp, extra_link_args=openmp),
    ]) + [
        Extension("plain_c_scorer", ["plain_c_scorer.c"], include_dirs=[ce_kernels.get_include()]),
    ],
)
