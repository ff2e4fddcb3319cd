"""Our seccomp profile for every sandbox container (Docker's JSON format, `seccomp=<json>`).

An allowlist: what programs of every language runtime we run need (Python, Node.js, the JVM,
Go, Rust, C/C++, Mono, Ruby, PHP, bash) is allowed; everything else fails with EPERM, and a
few syscalls runtimes probe and fall back from fail with ENOSYS, as on a kernel without them.
Those get SCMP_ACT_TRACE, not SCMP_ACT_ERRNO(ENOSYS): with no tracer attached (and none can be:
ptrace is refused) the kernel fails a traced syscall with ENOSYS, and so does gVisor, whose
runsc up to at least release 20221219 turns every errnoRet into EPERM; an EPERM from clone3
would leave glibc unable to start a thread. (A tracer on the host that asks for seccomp stops,
such as `strace --seccomp-bpf`, would let those syscalls run while it is attached.)
It is Docker's default profile minus what a program never needs, after what gVisor leaves
unimplemented or behind a capability (isolate filters no syscalls; it relies on namespaces):

- debugging other processes (ptrace, process_vm_readv/writev, process_madvise, pidfd_getfd,
  kcmp): reading or steering another process is the classic way out of a sandbox, and the
  runner (PID 1) shares the container;
- io_uring (ENOSYS): a second syscall interface that bypasses this filter and has had a long
  line of kernel exploits; runtimes fall back to epoll and read/write;
- perf_event_open, bpf, userfaultfd: large kernel attack surface, and the usual tools of
  kernel exploits (side channels, JIT-ed programs, racing page faults);
- keyctl, add_key, request_key: the kernel keyring is not namespaced;
- namespaces and mounts (unshare, setns, clone with CLONE_NEW* flags, clone3 as ENOSYS so
  glibc falls back to clone, mount, umount, pivot_root, chroot and the new mount API): a new
  user namespace hands out every capability inside it and with it the kernel's least
  hardened code;
- the host itself (kexec, reboot, module loading, acct, quotactl, swapon/off, syslog,
  setting the clock, iopl/ioperm, modify_ldt, sethostname, vhangup, lookup_dcookie):
  capabilities we drop anyway, refused twice;
- open_by_handle_at, name_to_handle_at: opening files by handle escapes the container's
  root (the "shocker" escape); fanotify_init/mark watch whole filesystems;
- personality other than the harmless values (no ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC...);
- socket() other than AF_UNIX, AF_INET, AF_INET6 and NETLINK_ROUTE netlink: every other
  family (AF_VSOCK, AF_PACKET, AF_ALG, AF_BLUETOOTH, AF_KEY, AF_TIPC, AF_RDS, AF_CAN...)
  gets EAFNOSUPPORT (EPERM under such a runsc), and the kernel never loads their modules;
  socketpair() only for AF_UNIX, and i386's socketcall() not at all (it hides the family);
- NUMA placement, memfd_secret, landlock, the LSM attribute calls, statmount/listmount and
  remap_file_pages (ENOSYS): nothing a program needs; runtimes treat them as absent;
- i386 syscalls (`int 0x80` from any x86-64 process) kill the process: the architecture is
  left out on purpose. On i386, libseccomp turns socket() rules into socketcall() rules that
  cannot see the family (it is behind a pointer), so allowing any family there allows them
  all, AF_VSOCK included; and the 32-bit compat layer is attack surface of its own.

Under gVisor (runsc --oci-seccomp, checked with Debian's 0.0~20221219) the Sentry applies the
profile itself, before its own syscall table, with these differences from runc:

- runsc finds each name in gVisor's syscall table, not libseccomp's, and skips the names it
  lacks (logged only in its debug log), as runc skips those libseccomp lacks. Two are spelled
  otherwise there: pselect6 is "pselect" and _sysctl is "sysctl" (`GVISOR_NAMES`); allowed
  under its kernel name only, pselect6 (what glibc's select() and pselect() call) was EPERM.
  So an allowed syscall is listed under both names; libseccomp knows neither gVisor spelling.
- Syscalls gVisor does not have (openat2, pidfd_getfd, process_madvise, and every one from
  Linux 5.12's mount_setattr on: landlock, memfd_secret, process_mrelease, futex_waitv,
  set_mempolicy_home_node, cachestat, fchmodat2, futex_wake..., statmount, listmount, lsm_*,
  mseal, uretprobe) have no name there: no rule matches them, so they fail with EPERM (the
  default), not ENOSYS, those of ABSENT included, and openat2 too (a caller that falls back
  only on ENOSYS does not). gVisor has pidfd_open, but it answers ENOSYS; clone3 and io_uring
  have names there and are ENOSYS as on Linux.
- errnoRet and defaultErrnoRet are ignored (every errno is EPERM, so refused socket families
  get EPERM); SCMP_ACT_TRACE with no tracer is ENOSYS, as on Linux; SCMP_ACT_LOG is refused
  (the container does not start); archMap is ignored (gVisor runs native code only). Argument
  conditions on distinct indexes must all hold, as with libseccomp (on one index any may:
  none of our rules does that).
- /proc/<pid>/status shows "Seccomp: 2" but has no NoNewPrivs line; prctl(PR_GET_NO_NEW_PRIVS)
  answers 1.

`PROFILE` is the compact JSON, computed once; the policy requires exactly this string.
"""

from __future__ import annotations

import json
from typing import Any

EPERM = 1
EAFNOSUPPORT = 97

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0  # interfaces and addresses: getifaddrs(), if_nameindex(), getaddrinfo()
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: clone() without them.
CLONE_NAMESPACES = 0x7E020000
# PER_LINUX, PER_LINUX32, UNAME26, UNAME26 | PER_LINUX32, and 0xffffffff (query only).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

ALLOWED: dict[str, str] = {
    "files": """
        access faccessat faccessat2 open openat openat2 creat close close_range
        read write readv writev pread64 pwrite64 preadv preadv2 pwritev pwritev2 lseek _llseek
        stat fstat lstat newfstatat statx stat64 fstat64 lstat64 fstatat64
        statfs fstatfs statfs64 fstatfs64 getdents getdents64 readlink readlinkat
        mkdir mkdirat rmdir rename renameat renameat2 link linkat symlink symlinkat
        unlink unlinkat chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat
        chown32 fchown32 lchown32 truncate ftruncate truncate64 ftruncate64 fallocate
        fadvise64 fadvise64_64 arm_fadvise64_64 readahead fsync fdatasync sync syncfs
        sync_file_range sync_file_range2 arm_sync_file_range flock fcntl fcntl64
        dup dup2 dup3 pipe pipe2 splice tee vmsplice sendfile sendfile64 copy_file_range
        utime utimes utimensat utimensat_time64 futimesat mknod mknodat umask
        chdir fchdir getcwd ioctl cachestat
        getxattr lgetxattr fgetxattr getxattrat setxattr lsetxattr fsetxattr setxattrat
        listxattr llistxattr flistxattr listxattrat
        removexattr lremovexattr fremovexattr removexattrat
        inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
    """,
    "waiting": """
        select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64
        epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2
        eventfd eventfd2 signalfd signalfd4 timerfd_create timerfd_settime timerfd_settime64
        timerfd_gettime timerfd_gettime64
        io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
    """,
    "memory": """
        brk mmap mmap2 munmap mremap mprotect madvise mincore msync
        mlock mlock2 munlock mlockall munlockall memfd_create membarrier
        pkey_alloc pkey_free pkey_mprotect map_shadow_stack mseal
    """,
    "processes": """
        fork vfork execve execveat exit exit_group wait4 waitid waitpid
        getpid getppid gettid getpgid setpgid getpgrp getsid setsid
        set_tid_address set_robust_list get_robust_list
        futex futex_time64 futex_waitv futex_wake futex_wait futex_requeue rseq
        prctl arch_prctl set_thread_area get_thread_area set_tls cacheflush breakpoint
        capget capset prlimit64 getrlimit setrlimit ugetrlimit getrusage
        getpriority setpriority sched_yield sched_getaffinity sched_setaffinity
        sched_getparam sched_setparam sched_getscheduler sched_setscheduler
        sched_get_priority_max sched_get_priority_min
        sched_rr_get_interval sched_rr_get_interval_time64 sched_getattr sched_setattr
        getcpu ioprio_get ioprio_set pidfd_open pidfd_send_signal process_mrelease
        seccomp uname sysinfo getrandom restart_syscall uretprobe
    """,
    "signals": """
        kill tkill tgkill rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending
        rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo
        rt_tgsigqueueinfo sigaltstack sigreturn sigprocmask pause alarm getitimer setitimer
    """,
    "time": """
        clock_gettime clock_gettime64 clock_getres clock_getres_time64
        clock_nanosleep clock_nanosleep_time64 nanosleep gettimeofday time times
        timer_create timer_delete timer_settime timer_settime64 timer_gettime
        timer_gettime64 timer_getoverrun adjtimex clock_adjtime clock_adjtime64
    """,
    "identity": """
        getuid geteuid getgid getegid getresuid getresgid getgroups
        getuid32 geteuid32 getgid32 getegid32 getresuid32 getresgid32 getgroups32
        setuid setgid setreuid setregid setresuid setresgid setgroups setfsuid setfsgid
        setuid32 setgid32 setreuid32 setregid32 setresuid32 setresgid32 setgroups32
        setfsuid32 setfsgid32
    """,
    "sockets": """
        bind connect listen accept accept4 getsockname getpeername getsockopt setsockopt
        send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64 shutdown
    """,
    "ipc": """
        shmget shmat shmdt shmctl semget semop semctl semtimedop semtimedop_time64
        msgget msgsnd msgrcv msgctl ipc
        mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive
        mq_timedreceive_time64 mq_notify mq_getsetattr
    """,
}

# gVisor's name of a syscall whose kernel (and libseccomp) name it does not know: runsc looks
# each name up in its own syscall table and skips, as runc does for libseccomp, those it lacks.
# An allowed syscall is listed under both names (each runtime skips the other's).
GVISOR_NAMES = {"pselect6": "pselect", "_sysctl": "sysctl"}

# Refused with ENOSYS (by SCMP_ACT_TRACE, see above): runtimes probe these and fall back
# (glibc's threads go to clone when clone3 is ENOSYS, libuv to epoll when io_uring_setup is).
ABSENT = """
    clone3 io_uring_setup io_uring_enter io_uring_register
    get_mempolicy set_mempolicy set_mempolicy_home_node mbind migrate_pages move_pages
    memfd_secret landlock_create_ruleset landlock_add_rule landlock_restrict_self
    lsm_get_self_attr lsm_set_self_attr lsm_list_modules statmount listmount remap_file_pages
"""

# Refused with EPERM (the default action; listed so the tests can hold the profile to it).
REFUSED = """
    ptrace process_vm_readv process_vm_writev process_madvise pidfd_getfd kcmp
    perf_event_open bpf userfaultfd keyctl add_key request_key
    unshare setns mount umount umount2 pivot_root chroot
    fsopen fsconfig fsmount fspick move_mount open_tree mount_setattr
    kexec_load kexec_file_load reboot init_module finit_module delete_module create_module
    acct quotactl quotactl_fd swapon swapoff syslog lookup_dcookie
    open_by_handle_at name_to_handle_at fanotify_init fanotify_mark
    settimeofday stime clock_settime clock_settime64 iopl ioperm modify_ldt vm86 vm86old
    sethostname setdomainname vhangup socketcall nfsservctl uselib ustat sysfs _sysctl sysctl
"""

# socket() families that get EAFNOSUPPORT: everything but the four allowed, as one EQ, GT or
# aligned MASKED_EQ block each (the tests check these cover exactly the complement).
_FAMILIES_REFUSED = (
    ("SCMP_CMP_EQ", 0, 0),  # AF_UNSPEC
    ("SCMP_CMP_EQ", 3, 0),  # AF_AX25
    ("SCMP_CMP_MASKED_EQ", 0xFFFFFFFC, 4),  # 4..7: AF_IPX, AF_APPLETALK, AF_NETROM, AF_BRIDGE
    ("SCMP_CMP_MASKED_EQ", 0xFFFFFFFE, 8),  # 8..9: AF_ATMPVC, AF_X25
    ("SCMP_CMP_EQ", 11, 0),  # AF_ROSE
    ("SCMP_CMP_MASKED_EQ", 0xFFFFFFFC, 12),  # 12..15: AF_DECnet, AF_NETBEUI, AF_SECURITY, AF_KEY
    ("SCMP_CMP_GT", AF_NETLINK, 0),  # 17 and up: AF_PACKET, AF_CAN, AF_ALG, AF_VSOCK...
)


def _names(text: str) -> list[str]:
    return sorted(set(text.split()))


def _arg(index: int, op: str, value: int, value_two: int = 0) -> dict[str, Any]:
    arg: dict[str, Any] = {"index": index, "value": value, "op": op}
    if value_two:
        arg["valueTwo"] = value_two
    return arg


def _rule(
    names: list[str], *args: dict[str, Any], errno: int = 0, action: str = ""
) -> dict[str, Any]:
    action = action or ("SCMP_ACT_ERRNO" if errno else "SCMP_ACT_ALLOW")
    rule: dict[str, Any] = {"names": names, "action": action}
    if errno:
        rule["errnoRet"] = errno
    if args:
        rule["args"] = list(args)  # several on one rule: all must hold (distinct indexes only)
    return rule


def build() -> dict[str, Any]:
    """The profile as a JSON-ready dict."""
    allowed = _names(" ".join(ALLOWED.values()))
    allowed = sorted({*allowed, *(GVISOR_NAMES[n] for n in allowed if n in GVISOR_NAMES)})
    rules = [
        _rule(allowed),
        _rule(["clone"], _arg(0, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACES, 0)),
        *(_rule(["personality"], _arg(0, "SCMP_CMP_EQ", p)) for p in PERSONALITIES),
        *(_rule(["socket"], _arg(0, "SCMP_CMP_EQ", f)) for f in (AF_UNIX, AF_INET, AF_INET6)),
        _rule(
            ["socket"], _arg(0, "SCMP_CMP_EQ", AF_NETLINK), _arg(2, "SCMP_CMP_EQ", NETLINK_ROUTE)
        ),
        _rule(["socketpair"], _arg(0, "SCMP_CMP_EQ", AF_UNIX)),
        *(
            _rule(["socket"], _arg(0, op, value, two), errno=EAFNOSUPPORT)
            for op, value, two in _FAMILIES_REFUSED
        ),
        _rule(_names(ABSENT), action="SCMP_ACT_TRACE"),  # ENOSYS with no tracer
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": rules,
    }


PROFILE: str = json.dumps(build(), separators=(",", ":"), sort_keys=True)
