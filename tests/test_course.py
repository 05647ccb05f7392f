"""course.py, the one table of the course variants: its derived facts, and how a skeleton's copy
(THIS_COURSE set) narrows what the tools offer."""

import pytest

from support import course


def test_the_reference_accuracies_are_designs_table():
    """DESIGN.md, "Reference results": the rubric's numbers."""
    luh, cmu = course.COURSES["rmsnorm"].reference_accuracy(), course.COURSES["layernorm"].reference_accuracy()
    assert luh == {("sst", "prompting"): {"dev": 0.213, "test": 0.224}, ("cfimdb", "prompting"): {"dev": 0.502},
                   ("sst", "finetuning"): {"dev": 0.414, "test": 0.418}, ("cfimdb", "finetuning"): {"dev": 0.800}}
    assert cmu[("sst", "lora")] == {"dev": 0.275, "test": 0.269} and cmu[("cfimdb", "lora")] == {"dev": 0.510}
    assert cmu[("cfimdb", "finetuning")] == {"dev": 0.833} and len(cmu) == 6


def test_each_course_names_its_options_files_and_outputs():
    luh, cmu = course.COURSES["rmsnorm"], course.COURSES["layernorm"]
    assert luh.options == ("generate", "prompt", "finetune") and cmu.options == luh.options + ("lora",)
    assert "lora.py" in cmu.student_code and "lora.py" not in luh.student_code
    assert "sst-test-lora-output.txt" in cmu.output_files() and "sst-test-lora-output.txt" not in luh.output_files()
    assert {"generated-sentence-temp-0.txt", "cfimdb-dev-prompting-output.txt"} <= luh.output_files()
    assert [course.output_name(o) for o in ("prompt", "finetune", "lora", "ia3")] == \
        ["prompting", "finetuning", "lora", "ia3"]


def test_the_solution_has_every_course_and_a_skeleton_one(monkeypatch):
    assert course.THIS_COURSE is None and [c.name for c in course.here()] == ["rmsnorm", "layernorm"]
    assert course.options_here() == tuple(course.OPTION_HELP) and course.families_here() == course.OPTION_FAMILIES
    assert course.COURSES["layernorm"].reference_file(course.OPTIMIZER_REFERENCE) == "optimizer_test_clip0.9.npy"

    monkeypatch.setattr(course, "THIS_COURSE", "rmsnorm")
    assert [c.name for c in course.here()] == ["rmsnorm"] and course.default().name == "rmsnorm"
    assert course.options_here() == ("generate", "prompt", "finetune")
    assert [f.name for f in course.families_here()] == ["generate", "classify"]
    assert course.family_running("prompt").module == "minllama.cli.classify"
    assert course.COURSES["rmsnorm"].reference_file(course.SANITY_REFERENCE) == "sanity_check.data"


@pytest.mark.parametrize("name", list(course.COURSES))
def test_each_course_ships_the_three_upstream_reference_names(name):
    references = dict(course.COURSES[name].references)
    assert set(references) == {course.ROPE_REFERENCE, course.OPTIMIZER_REFERENCE, course.SANITY_REFERENCE}


def test_the_option_table_serves_every_option_and_the_a_plus_family_runs_last():
    """Each option is served; the courses' options by a taught family; where an A+ family extends
    one, it comes after it in the table, so that it runs the option in the solution."""
    served = {option for family in course.OPTION_FAMILIES for option in family.options}
    assert served == set(course.OPTION_HELP)
    cmu = course.COURSES["layernorm"]
    assert [f.name for f in course.course_families(cmu)] == ["generate", "classify", "lora"]
    assert course.family_running("generate").name == "inference" and course.family_running("lora").name == "methods"
    for option in cmu.options:
        taught = [i for i, f in enumerate(course.OPTION_FAMILIES) if option in f.options and f.taught]
        extra = [i for i, f in enumerate(course.OPTION_FAMILIES) if option in f.options and not f.taught]
        assert taught and all(i > max(taught) for i in extra)
