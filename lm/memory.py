"""glibc's malloc told to keep freed memory for reuse instead of mapping large blocks anew."""
import ctypes

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def glibc_mallopt():
    """glibc's mallopt(parameter, value), or None where the C library is not glibc."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse: no mmap for large blocks and no trimming
    of the heap. By default every block above 32 MB (the bf16 copy of a large decoder weight, its
    fresh fp32 gradient) is a new mapping, page-faulted in again on every training step; kept, it
    is reused as it is. The process then holds on to its peak memory, which training reaches on
    every step anyway. Returns whether it applied: False where the C library is not glibc."""
    mallopt = glibc_mallopt()
    return mallopt is not None and mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
