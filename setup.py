"""The optional compiled accelerator; everything else is in pyproject.toml.

``optional=True``: where no C compiler or Python headers are found, the install goes on
without them and the Python paths serve (docs/target.md, "The compiled burst path";
docs/initiator.md, "The compiled core loops").
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
SHARED = ["src/aoe/_pyattr.h", "src/aoe/net/_mmsg_lengths.h"]  # included by both

setup(
    ext_modules=[
        Extension("aoe.target._burst", ["src/aoe/target/_burst.c"], depends=SHARED,
                  extra_compile_args=FLAGS, optional=True),
        Extension("aoe.initiator._compiled", ["src/aoe/initiator/_compiled.c"],
                  depends=SHARED, extra_compile_args=FLAGS, optional=True),
    ]
)
