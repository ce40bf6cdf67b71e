"""The docs name tests that exist: every ``tests/<file>.py::<test>`` in
docs/reliability.md and docs/architecture.md is a test function of that file."""

import ast
import os
import re

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _test_names(path: str) -> set[str]:
  tree = ast.parse(open(path).read())
  return {n.name for n in ast.walk(tree)
          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("doc", ["docs/reliability.md", "docs/architecture.md"])
def test_named_tests_exist(doc):
  text = open(os.path.join(_REPO, doc)).read()
  refs = re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)
  if doc == "docs/reliability.md":
    assert len(refs) >= 15, "the reliability table lost its test column"
  missing = [f"{f}::{t}" for f, t in refs
             if not os.path.exists(os.path.join(_REPO, f))
             or t not in _test_names(os.path.join(_REPO, f))]
  assert not missing, f"{doc} names tests that do not exist: {missing}"
