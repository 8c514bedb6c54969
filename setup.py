"""The optional compiled accelerator; everything else is in pyproject.toml.

``optional=True``: where no C compiler or Python headers are found, the install goes on
without it and the pure-Python path serves (see docs/target.md, "The compiled burst path").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "aoe.target._burst",
            ["src/aoe/target/_burst.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
