"""Dependencies point one way: console → gateway → billing → channels → accounts → common.

Every module of every app is parsed with `ast` and each of its imports (top-level or inside a
function, absolute or relative) is checked against the order: a module may import from its own
app and from apps below it, never from one above. config/ (the project's wiring), tests/ and
bench/ sit above everything and are not checked. The checker is also run on bad examples, so a
passing run means the rule holds, not that nothing was read.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: each app may import only the ones before it (and itself).
ORDER = ("common", "accounts", "channels", "billing", "gateway", "console")
RANK = {app: rank for rank, app in enumerate(ORDER)}


@dataclass(frozen=True)
class Violation:
    module: str  # path of the importing file, relative to the repository
    line: int
    imported: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}, which is above it"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in the tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def violations_in(source: str, path: Path) -> list[Violation]:
    """The imports of one file (at `path`, which decides its app) that point up the order."""
    app = path.relative_to(ROOT).parts[0]
    module = module_name(path)
    tree = ast.parse(source, filename=str(path))
    result = []
    for line, name in imported_modules(tree, module, is_package=path.name == "__init__.py"):
        target = name.split(".")[0]
        if target in RANK and RANK[target] > RANK[app]:
            result.append(Violation(str(path.relative_to(ROOT)), line, name))
    return result


def app_modules() -> list[Path]:
    return sorted(path for app in ORDER for path in (ROOT / app).rglob("*.py"))


def test_every_app_exists_and_has_modules():
    counts = {
        app: sum(1 for path in app_modules() if path.relative_to(ROOT).parts[0] == app) for app in ORDER
    }
    assert all(count > 0 for count in counts.values()), counts


def test_no_module_imports_an_app_above_its_own():
    found = [v for path in app_modules() for v in violations_in(path.read_text(), path)]
    assert [str(v) for v in found] == []


def test_accounts_names_no_url_of_an_app_above_it():
    # The navigation that names every app's pages lives in console; accounts' pages link only to
    # their own (and to the console's sign-in, which Django's auth settings name).
    above = [f"'{app}:" for app in ORDER[2:]] + [f'"{app}:' for app in ORDER[2:]]
    texts = [path.read_text() for path in (ROOT / "accounts").rglob("*.py")]
    texts += [path.read_text() for path in (ROOT / "templates" / "accounts").rglob("*.html")]
    assert [marker for text in texts for marker in above if marker in text] == []


@pytest.mark.parametrize(
    ("where", "source", "imported"),
    [
        ("accounts/models.py", "from billing.models import UsageLog\n", "billing.models"),
        ("accounts/views/keys.py", "import channels.snapshots\n", "channels.snapshots"),
        ("common/forms.py", "def f():\n    from accounts.models import User\n", "accounts.models"),
        ("channels/services.py", "from console import throttle\n", "console"),
        (
            "billing/pricing.py",
            "if True:\n    import gateway.fake_upstream as fake\n",
            "gateway.fake_upstream",
        ),
    ],
)
def test_the_checker_catches_an_import_against_the_order(where, source, imported):
    (violation,) = violations_in(source, ROOT / where)
    assert (violation.module, violation.imported) == (where, imported)


def test_the_checker_resolves_relative_imports_and_allows_the_order():
    # A relative import never leaves its top-level package, so it is always within the app.
    tree = ast.parse("from . import models\nfrom ..rules import parse_ip_rules\n")
    assert imported_modules(tree, "accounts.selectors.keys", is_package=False) == [
        (1, "accounts.selectors"),
        (2, "accounts.rules"),
    ]
    assert violations_in("from ..rules import parse_ip_rules\n", ROOT / "accounts/selectors/keys.py") == []
    allowed = "from accounts.models import User\nfrom common.money import format_usd\nimport django\n"
    assert violations_in(allowed, ROOT / "channels/models.py") == []
    assert violations_in("from billing.cost import Usage\n", ROOT / "console/dashboard.py") == []


def conftests_of_other_folders(source: str, path: Path) -> list[str]:
    """The conftest modules a test module at `path` imports from folders other than its own and
    those above it: a folder's conftest is its own; a helper two folders share goes in a module
    of tests/ (tests/holds.py)."""
    module = module_name(path)
    package = module.rsplit(".", 1)[0]
    tree = ast.parse(source, filename=str(path))
    return [
        name
        for _, name in imported_modules(tree, module, is_package=False)
        if name.endswith(".conftest") and not (package + ".").startswith(name.removesuffix("conftest"))
    ]


def test_no_test_imports_the_conftest_of_another_folder():
    found = {
        str(path.relative_to(ROOT)): imported
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if (imported := conftests_of_other_folders(path.read_text(), path))
    }
    assert found == {}


def test_the_conftest_checker_allows_its_own_folder_and_those_above():
    source = "from tests.gateway.conftest import held\nfrom tests.conftest import x\n"
    assert conftests_of_other_folders(source, ROOT / "tests/billing/test_x.py") == ["tests.gateway.conftest"]
    assert conftests_of_other_folders(source, ROOT / "tests/gateway/test_x.py") == []
