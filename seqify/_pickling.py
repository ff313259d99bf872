"""cloudpickle helpers: clear, early errors for what cannot reach a worker."""

import cloudpickle


def check_picklable(obj, argument: str) -> None:
    """Raises TypeError naming `argument` and the culprit if `obj` won't cloudpickle."""
    try:
        cloudpickle.dumps(obj)
    except Exception as exc:
        culprit = _find_culprit(obj)
        where = f" The culprit is {culprit}." if culprit else ""
        raise TypeError(
            f"`{argument}` ({_short_repr(obj)}) cannot be sent to worker processes: "
            f"{type(exc).__name__}: {exc}.{where} With use_multiprocessing=True, everything "
            f"`{argument}` refers to must be picklable by cloudpickle (a lock, an open file, "
            "a socket or a database connection is not): create such objects inside the "
            "function on first use, take locks from `seqify.locks.get_lock(key)`, or use "
            "thread workers (use_multiprocessing=False)."
        ) from exc


def _short_repr(obj) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _fails(value) -> bool:
    try:
        cloudpickle.dumps(value)
        return False
    except Exception:
        return True


def _find_culprit(obj):
    """Best effort: which closure variable, default or attribute won't pickle."""
    candidates = []
    code = getattr(obj, "__code__", None)
    closure = getattr(obj, "__closure__", None)
    if code is not None and closure:
        for name, cell in zip(code.co_freevars, closure):
            try:
                candidates.append((f"closure variable `{name}`", cell.cell_contents))
            except ValueError:
                pass
    if code is not None:
        module_globals = getattr(obj, "__globals__", {})
        for name in code.co_names:
            if name in module_globals:
                candidates.append((f"global `{name}`", module_globals[name]))
    for i, value in enumerate(getattr(obj, "__defaults__", None) or ()):
        candidates.append((f"default argument #{i}", value))
    bound_self = getattr(obj, "__self__", None)
    if bound_self is not None:
        candidates.append(("the bound object", bound_self))
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict) and code is None:
        for name, value in attributes.items():
            candidates.append((f"attribute `{name}`", value))
    for label, value in candidates:
        if _fails(value):
            return f"{label} ({type(value).__module__}.{type(value).__qualname__})"
    return None
