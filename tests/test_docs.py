"""The docs' generated blocks say what the registries say (scripts/gen_docs.py): docs/attacks.md's option table
from the attack records, docs/results.md's column tables from pixelreg_core.results.COLUMNS. A new option or
column, or a changed default, fails here until `python scripts/gen_docs.py` is run."""

from __future__ import annotations

from scripts.gen_docs import PAGES, REPO, render


def test_the_generated_doc_blocks_are_up_to_date():
    stale = [page for page, blocks in PAGES.items()
             if render((REPO / page).read_text(), blocks, page) != (REPO / page).read_text()]
    assert not stale, f"run python scripts/gen_docs.py: stale generated blocks in {', '.join(stale)}"


def test_every_option_and_column_is_in_the_docs():
    from pixelreg_core.attacks import ATTACKS
    from pixelreg_core.results import SCHEMAS

    attacks_md = (REPO / "docs/attacks.md").read_text()
    results_md = (REPO / "docs/results.md").read_text()
    assert all(f"| `{name}` |" in attacks_md for attack in ATTACKS.values() for name in attack.options)
    assert all(f"| `{field.name}` |" in results_md for schema in SCHEMAS.values() for field in schema)
