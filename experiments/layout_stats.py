"""The repository's shape at one commit, as a markdown table: lines per Python file, functions
over 50 lines, the README's length and what results/ holds (the "before and after" of issue 32).

    python -m experiments.layout_stats                 # the commit checked out (HEAD)
    python -m experiments.layout_stats --rev e75ddd2   # any commit of this repository

It reads the commit from git (git ls-tree, git show), never the working tree, so uncommitted
edits do not count and any commit can be measured from a clean clone. A function's length runs
from its `def` line to its last line (decorators left out), nested functions and methods included.
"""
import argparse
import ast
import subprocess

from lm import cli

LONG_FUNCTION = 50  # lines; the style guide's limit
LONG_FILE = 350


def git(*args):
    """stdout of a git command run in the current directory, or a UserError with git's reason."""
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise cli.UserError("git is not installed here") from None
    if proc.returncode != 0:
        raise cli.UserError(f"git {' '.join(args)}: {cli.first_line(proc.stderr or proc.stdout)}")
    return proc.stdout


def read_tree(rev):
    """{path: text} of every file of commit `rev` that is text."""
    names = git("ls-tree", "-r", "--name-only", "-z", rev).split("\0")
    files = {}
    for name in filter(None, names):
        blob = subprocess.run(["git", "show", f"{rev}:{name}"], capture_output=True, check=True).stdout
        try:
            files[name] = blob.decode("utf-8")
        except UnicodeDecodeError:  # a binary file (figures, gzipped data)
            files[name] = None
    return files


def line_count(text):
    return text.count("\n") + (0 if text.endswith("\n") or not text else 1)


def long_functions(path, text):
    """(path, qualified name, lines) of each function of the file over LONG_FUNCTION lines."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}."
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = child.end_lineno - child.lineno + 1
                if length > LONG_FUNCTION:
                    found.append((path, name[:-1], length))
            visit(child, name)

    visit(ast.parse(text, filename=path), "")
    return found


def summary(files):
    """[(measure, value)] of the whole commit."""
    py = {p: t for p, t in files.items() if p.endswith(".py") and t is not None}
    results = [p for p in files if p.startswith("results/")]
    in_results = {ext: [p for p in results if p.endswith(ext)] for ext in (".py", ".sh")}
    readme = files.get("README.md")
    top_py = [p for p in py if "/" not in p]
    return [
        ("README.md lines", line_count(readme) if readme is not None else "no README.md"),
        ("Python files (top level)", f"{len(py)} ({len(top_py)})"),
        ("Python lines", sum(line_count(t) for t in py.values())),
        (f"Python files over {LONG_FILE} lines", sum(line_count(t) > LONG_FILE for t in py.values())),
        (f"functions over {LONG_FUNCTION} lines", sum(len(long_functions(p, t)) for p, t in py.items())),
        ("results/ files (at its root)", f"{len(results)} ({sum(p.count('/') == 1 for p in results)})"),
        ("results/ .py files (lines)",
         f"{len(in_results['.py'])} ({sum(line_count(files[p] or '') for p in in_results['.py'])})"),
        ("results/ .sh files (lines)",
         f"{len(in_results['.sh'])} ({sum(line_count(files[p] or '') for p in in_results['.sh'])})"),
    ]


def report(rev, files):
    commit = git("rev-parse", "--short", f"{rev}^{{commit}}").strip()
    py = {p: t for p, t in sorted(files.items()) if p.endswith(".py") and t is not None}
    out = [f"## Layout at {commit}", "", "| measure | value |", "|---|---:|"]
    out += [f"| {k} | {v} |" for k, v in summary(files)]
    out += ["", "### Lines per Python file", "", "| file | lines |", "|---|---:|"]
    out += [f"| {p} | {line_count(t)} |" for p, t in py.items()]
    out += ["", f"### Functions over {LONG_FUNCTION} lines", "", "| file | function | lines |", "|---|---|---:|"]
    rows = [f for p, t in py.items() for f in long_functions(p, t)]
    out += [f"| {p} | {name} | {n} |" for p, name, n in rows] or ["| (none) | | |"]
    return "\n".join(out)


def get_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD",
                        help="the commit to measure: a hash, a branch or a tag (default: HEAD)")
    return parser


@cli.user_errors
def main(argv=None):
    args = get_parser().parse_args(argv)
    if not git("rev-parse", "--is-inside-work-tree").strip() == "true":
        raise cli.UserError("run it inside a clone of this repository")
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.rev}^{{commit}}"],
                      capture_output=True, check=False).returncode != 0:
        raise cli.UserError(f"--rev {args.rev}: no such commit in this repository")
    print(report(args.rev, read_tree(args.rev)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
