"""The two courses this assignment is taught in, and every fact that tells them apart.

One table, COURSES, read by every tool that depends on the course: the submission check
(prepare_submit.py), the grader checks (optimizer_test.py, sanity_check.py), the student checks
(tests/student), the skeleton generator and the autograder (instructor/).

  rmsnorm    the LUH course: RMSNorm, plain temperature sampling, AdamW without gradient
             clipping, no LoRA
  layernorm  the 2025 CMU course: LayerNorm, epsilon sampling, clipping, LoRA

The instructors' solution holds both (THIS_COURSE is None); a student skeleton holds one, and
instructor/make_skeleton.py writes its name into THIS_COURSE. Both courses publish their grader
reference files under the same upstream names with different contents: the solution keeps each
under an explicit name, a skeleton ships its own under the upstream name.

A new classification method is one entry in a course's `methods` (or, for a method no course
teaches, in SOLUTION_ONLY_METHODS): its `--option`, the word in its output names, the student file
that holds it and its reference accuracies. OPTION_FAMILIES, the option table, says which module
owns each option's flags and runs it: what a skeleton ships is computed from it (instructor/shipping.py).
"""

from dataclasses import dataclass

THIS_COURSE: str | None = None  # None: the instructors' solution, which has every course


@dataclass(frozen=True)
class Method:
    """One way to classify with the model, run by `run_llama.py --option OPTION`."""
    option: str
    output: str  # its prediction files: <dataset>-<dev|test>-<output>-output.txt
    module: str | None = None  # the student file only this method needs (None: shared code)
    accuracy: tuple = ()  # upstream reference (DESIGN.md): ((dataset, split, accuracy), ...)


@dataclass(frozen=True)
class Course:
    name: str
    description: str
    norm: str  # LlamaConfig.norm_type of the course, and of its sanity reference
    epsilon: float  # generate's default epsilon: 0 is plain temperature sampling
    max_grad_norm: float | None  # AdamW's clipping in the optimizer reference; None: no clipping at all
    methods: tuple[Method, ...]
    solved: frozenset = frozenset()  # solution regions that stay solved: not this course's exercise
    references: tuple = ()  # (upstream name it ships under, explicit name in the solution), ...

    @property
    def options(self) -> tuple[str, ...]:
        """The `run_llama.py --option` values of this course."""
        return ("generate", *(method.option for method in self.methods))

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(method.module for method in self.methods if method.module)

    @property
    def student_code(self) -> tuple[str, ...]:
        """The files holding a student's code, which a submission must contain."""
        return STUDENT_CODE + self.modules

    def output_files(self) -> frozenset[str]:
        """The run outputs a submission must contain (upstream's prepare_submit.py list)."""
        return frozenset({*GENERATION_FILES, *(f"{dataset}-{split}-{method.output}-output.txt"
                                               for method in self.methods for dataset in DATASETS
                                               for split in SPLITS)})

    def reference_accuracy(self) -> dict[tuple[str, str], dict[str, float]]:
        """{(dataset, output word): {split: accuracy}}: the table the rubric compares with."""
        table = {}
        for method in self.methods:
            for dataset, split, accuracy in method.accuracy:
                table.setdefault((dataset, method.output), {})[split] = accuracy
        return table

    def points(self) -> dict[str, float]:
        """The most points each graded item can earn, in the order the reports list them: the
        grader checks, then the prediction files, then the generations (POINTS below)."""
        outputs = sorted(self.output_files() - set(GENERATION_FILES))
        return {**{check: POINTS[check] for check in GRADER_CHECKS},
                **{name: POINTS["prediction file"] for name in outputs},
                **{name: POINTS["generation file"] for name in GENERATION_FILES}}

    def explicit_reference(self, upstream: str) -> str:
        """The explicit name (as in the solution and in assets/reference) of one reference file."""
        return dict(self.references)[upstream]

    def reference_file(self, upstream: str) -> str:
        """The name one of this course's grader reference files has in this copy of the code."""
        return self.explicit_reference(upstream) if THIS_COURSE is None else upstream


STUDENT_CODE = ("run_llama.py", "llama.py", "rope.py", "optimizer.py", "classifier.py")
GENERATION_FILES = ("generated-sentence-temp-0.txt", "generated-sentence-temp-1.txt")
DATASETS, SPLITS = ("sst", "cfimdb"), ("dev", "test")
# The grader checks, with the titles the reports, Gradescope and GitHub Classroom give them.
GRADER_CHECKS = {"rope": "RoPE check (rope_test.py)", "optimizer": "optimizer check (optimizer_test.py)",
                 "sanity": "sanity check (sanity_check.py)"}
# Points, for platforms that score rather than letter (Gradescope, GitHub Classroom): the default of
# every grader check and output file, the one place to change them. The upstream rubric's letter
# (B+: sanity and optimizer pass; A: the accuracies within tolerance of the reference table) is
# computed apart from them and shown beside the score. A prediction file earns its points when it
# is well-formed and its accuracy is within the rubric's tolerance (or has no gold labels to score);
# a generation when it is there, not empty and not flagged for a person to read.
POINTS = {"rope": 10, "optimizer": 15, "sanity": 25, "prediction file": 5, "generation file": 5}
ROPE_REFERENCE, OPTIMIZER_REFERENCE, SANITY_REFERENCE = (
    "rotary_embedding_actual.data", "optimizer_test.npy", "sanity_check.data")

COURSES = {
    "rmsnorm": Course(
        name="rmsnorm",
        description="the LUH course: RMSNorm, plain temperature sampling, AdamW without clipping, no LoRA",
        norm="rmsnorm", epsilon=0.0, max_grad_norm=None,
        methods=(
            Method("prompt", "prompting", accuracy=(("sst", "dev", 0.213), ("sst", "test", 0.224),
                                                   ("cfimdb", "dev", 0.502))),
            Method("finetune", "finetuning", accuracy=(("sst", "dev", 0.414), ("sst", "test", 0.418),
                                                       ("cfimdb", "dev", 0.800))),
        ),
        solved=frozenset({"llama.py:LayerNorm._norm"}),
        references=((ROPE_REFERENCE, "rotary_embedding_actual.data"), (OPTIMIZER_REFERENCE, "optimizer_test.npy"),
                    (SANITY_REFERENCE, "sanity_check_rmsnorm.data")),
    ),
    "layernorm": Course(
        name="layernorm",
        description="the 2025 CMU course: LayerNorm, LoRA, epsilon sampling, AdamW with gradient clipping",
        norm="layernorm", epsilon=0.05, max_grad_norm=0.9,
        methods=(
            Method("prompt", "prompting", accuracy=(("sst", "dev", 0.237), ("sst", "test", 0.250),
                                                   ("cfimdb", "dev", 0.490))),
            Method("finetune", "finetuning", accuracy=(("sst", "dev", 0.411), ("sst", "test", 0.399),
                                                       ("cfimdb", "dev", 0.833))),
            Method("lora", "lora", module="lora.py", accuracy=(("sst", "dev", 0.275), ("sst", "test", 0.269),
                                                               ("cfimdb", "dev", 0.510))),
        ),
        references=((ROPE_REFERENCE, "rotary_embedding_actual.data"),
                    (OPTIMIZER_REFERENCE, "optimizer_test_clip0.9.npy"),
                    (SANITY_REFERENCE, "sanity_check_layernorm.data")),
    ),
}
DEFAULT_COURSE = "layernorm"  # what a tool assumes in the solution, where no course is set
# Methods of the solution that no course teaches (e.g. a future IA3): their modules never ship.
SOLUTION_ONLY_METHODS: tuple[Method, ...] = ()


@dataclass(frozen=True)
class OptionFamily:
    """One row of the command line: the `--option` values it serves and the module that owns its
    flags, `add_flags(parser)` and `check(args)`, and runs them, `run(args, device, dist, out_dir)`.

    run_llama.py imports a family's module only through this table, so the code an option needs is
    reached only through its row. A course's skeleton ships the families its courses teach whose
    options are all the course's (instructor/shipping.py ships their import closure, nothing else);
    the A+ families exist only in the solution. Where several families here serve one option, the
    last one runs it: the A+ family of an option extends the course's own (its flags come on top)."""
    name: str
    options: tuple[str, ...]
    module: str
    taught: bool  # a course family (in the skeletons) or an A+ one (the solution only)


OPTION_FAMILIES = (
    OptionFamily("generate", ("generate",), "minllama.cli.generate", taught=True),
    OptionFamily("classify", ("prompt", "finetune"), "minllama.cli.classify", taught=True),
    OptionFamily("lora", ("lora",), "minllama.cli.lora", taught=True),
    OptionFamily("inference", ("generate", "prompt", "chat"), "minllama.cli.inference", taught=False),
    OptionFamily("methods", ("prompt", "finetune", "lora", "ia3", "prompt_tuning", "prompt_finetune"),
                 "minllama.cli.methods", taught=False),
    OptionFamily("pretrain", ("pretrain",), "minllama.cli.pretrain", taught=False),
    OptionFamily("instruct", ("instruct_tune",), "minllama.cli.instruct", taught=False),
)
# The A+ work of the solution and its tools: packages and files no skeleton ships. A course whose
# code reaches one of them stops the skeleton build, naming the chain of imports (instructor/shipping.py).
SOLUTION_ONLY = ("minllama/methods/", "minllama/inference/", "minllama/pretraining/", "minllama/instruct/",
                 "minllama/tools/export.py", "minllama/tools/attention_map.py", "minllama/tools/tokenizer_compare.py",
                 "minllama/classify/method_builders.py")
# Every `--option` value, in the order `run_llama.py -h` lists them, with what it does.
OPTION_HELP = {
    "generate": "continue a prompt",
    "prompt": "zero-shot classification (frozen model)",
    "finetune": "train the whole model",
    "lora": "train LoRA adapters and the head",
    "pretrain": "train a language model on --corpus (or the sentences of --train)",
    "chat": "talk to an instruct model through its chat template",
    "instruct_tune": "instruction tuning through the chat template, loss on the answers",
    "ia3": "train IA3 vectors and the head",
    "prompt_tuning": "train a soft prompt and the head",
    "prompt_finetune": "train the zero-shot classifier itself",
}


def course_families(course: "Course") -> tuple[OptionFamily, ...]:
    """The families a course's skeleton ships: taught, with every option of theirs in the course."""
    return tuple(family for family in OPTION_FAMILIES
                 if family.taught and set(family.options) <= set(course.options))


def families_here() -> tuple[OptionFamily, ...]:
    """The families this copy of the code has: all of them in the solution, a course's own in a skeleton."""
    return OPTION_FAMILIES if THIS_COURSE is None else course_families(COURSES[THIS_COURSE])


def options_here() -> tuple[str, ...]:
    """The `--option` values this copy offers, in OPTION_HELP's order."""
    served = {option for family in families_here() for option in family.options}
    return tuple(option for option in OPTION_HELP if option in served)


def family_running(option: str) -> OptionFamily:
    """The family that runs `option` here: the last of those serving it."""
    return [family for family in families_here() if option in family.options][-1]


def here() -> list[Course]:
    """The courses this copy of the code has: both in the solution, one in a skeleton."""
    return list(COURSES.values()) if THIS_COURSE is None else [COURSES[THIS_COURSE]]


def default() -> Course:
    """The course a tool checks when not told: this skeleton's, or DEFAULT_COURSE in the solution."""
    return COURSES[THIS_COURSE or DEFAULT_COURSE]


def output_name(option: str) -> str:
    """The word an option's prediction files carry, <dataset>-<split>-WORD-output.txt: the course
    methods' own (prompt -> prompting, finetune -> finetuning), else the option's name."""
    words = {method.option: method.output for method in all_methods()}
    return words.get(option, option)


def all_methods() -> list[Method]:
    return [method for c in COURSES.values() for method in c.methods] + list(SOLUTION_ONLY_METHODS)
