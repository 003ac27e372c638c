from pgops import specdoc


def test_render_lists_types_choices_defaults_and_suboptions():
    specs = {
        "demo": {
            "short_description": "Demo role.",
            "options": {
                "demo_size": {"type": "int", "default": 3, "description": "How many."},
                "demo_mode": {"type": "str", "choices": ["a", "b"], "default": "a", "description": "Mode."},
                "demo_map": {"type": "dict", "default": {}, "description": "Map.", "options": {"k": {"type": "str"}}},
                "demo_list": {"type": "list", "elements": "str", "description": ["Several", "lines."]},
            },
        }
    }
    out = specdoc.render(specs)
    assert "### Role `demo`" in out
    assert "| `demo_size` | int | `3` | How many. |" in out
    assert "| `demo_mode` | str (a, b) | `a` | Mode. |" in out
    assert "Keys: `k`." in out
    assert "| `demo_list` | list of str |  | Several lines. |" in out


def test_update_replaces_only_the_marked_section():
    readme = f"intro\n{specdoc.BEGIN}\nold\n{specdoc.END}\noutro\n"
    new = specdoc.update(readme, {"r": {"short_description": "R.", "options": {}}})
    assert new.startswith("intro\n") and new.endswith(f"{specdoc.END}\noutro\n")
    assert "old" not in new and "### Role `r`" in new


def test_check_fails_on_a_stale_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{specdoc.BEGIN}\nstale\n{specdoc.END}\n")
    assert specdoc.main(["--check", str(readme)]) == 1
    assert specdoc.main(["--write", str(readme)]) == 0
    assert specdoc.main(["--check", str(readme)]) == 0
