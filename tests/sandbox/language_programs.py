"""One small program per language and behaviour, for the per-language tests and the bench.

Every language has:
  hello    prints "hello <stdin>" (stdin stripped) and then its arguments joined by ","
  crash    a runtime error of the language's own kind; its exit code (or signal) is in ERRORS
  spin     loops forever (the timeout must end it)
  hog      allocates memory until something stops it (the memory limit must)
  threads  starts THREADS threads (processes for bash and PHP) that each print "t<i>", waits
           for them, then prints "done"
and every compiled language a `broken` program that does not build.
"""

from __future__ import annotations

THREADS = 16

PROGRAMS: dict[str, dict[str, str]] = {
    "python": {
        "hello": 'import sys\nprint("hello " + sys.stdin.read().strip())\nprint(",".join(sys.argv[1:]))\n',
        "crash": "raise ValueError('boom')\n",
        "spin": "while True:\n    pass\n",
        "hog": "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n",
        "threads": (
            "import threading\n"
            "ts = [threading.Thread(target=print, args=(f't{i}',)) for i in range(16)]\n"
            "for t in ts: t.start()\n"
            "for t in ts: t.join()\n"
            "print('done')\n"
        ),
    },
    "javascript": {
        "hello": (
            "const input = require('fs').readFileSync(0, 'utf8');\n"
            "console.log('hello ' + input.trim());\n"
            "console.log(process.argv.slice(2).join(','));\n"
        ),
        "crash": "null.boom();\n",
        "spin": "for (;;) {}\n",
        "hog": "const a = [];\nfor (;;) a.push(new Array(1 << 20).fill(1.5));\n",
        "threads": (
            "const { Worker } = require('worker_threads');\n"
            "let left = 16;\n"
            "for (let i = 0; i < 16; i++) {\n"
            "  const w = new Worker(`require('worker_threads').parentPort.postMessage('t${i}')`,"
            " { eval: true });\n"
            "  w.on('message', (m) => console.log(m));\n"
            "  w.on('exit', () => { if (--left === 0) console.log('done'); });\n"
            "}\n"
        ),
    },
    "typescript": {
        "hello": (
            "const input: string = require('fs').readFileSync(0, 'utf8');\n"
            "const args: string[] = process.argv.slice(2);\n"
            "console.log('hello ' + input.trim());\n"
            "console.log(args.join(','));\n"
        ),
        "crash": "function f(x: number): number { throw new Error('boom ' + x); }\nf(1);\n",
        "spin": "for (;;) {}\n",
        "hog": "const a: number[][] = [];\nfor (;;) a.push(new Array(1 << 20).fill(1.5));\n",
        "threads": (
            "const { Worker } = require('worker_threads');\n"
            "let left: number = 16;\n"
            "for (let i = 0; i < 16; i++) {\n"
            "  const w = new Worker(`require('worker_threads').parentPort.postMessage('t${i}')`,"
            " { eval: true });\n"
            "  w.on('message', (m: string) => console.log(m));\n"
            "  w.on('exit', () => { if (--left === 0) console.log('done'); });\n"
            "}\n"
        ),
        "broken": "const n: number = 'not a number';\nconsole.log(n);\n",
    },
    "bash": {
        "hello": 'read -r line\necho "hello $line"\n(IFS=,; echo "$*")\n',
        "crash": "set -e\nno_such_command_here\n",
        "spin": "while :; do :; done\n",
        "hog": 'x=x\nwhile :; do x="$x$x"; done\n',
        "threads": "for i in $(seq 0 15); do (echo t$i) & done\nwait\necho done\n",
    },
    "c": {
        "hello": (
            "#include <stdio.h>\n#include <string.h>\n"
            "int main(int argc, char **argv) {\n"
            '  char line[256] = "";\n'
            '  if (fgets(line, sizeof line, stdin)) line[strcspn(line, "\\n")] = 0;\n'
            '  printf("hello %s\\n", line);\n'
            '  for (int i = 1; i < argc; i++) printf("%s%s", i > 1 ? "," : "", argv[i]);\n'
            '  printf("\\n");\n  return 0;\n}\n'
        ),
        "crash": "int main(void) { volatile int *p = 0; return *p; }\n",
        "spin": "int main(void) { for (;;) {} }\n",
        "hog": (
            "#include <stdlib.h>\n#include <string.h>\n"
            "int main(void) { for (;;) { char *p = malloc(16 << 20); if (!p) return 1;"
            " memset(p, 1, 16 << 20); } }\n"
        ),
        "threads": (
            "#include <pthread.h>\n#include <stdio.h>\n"
            'static void *run(void *arg) { printf("t%ld\\n", (long)arg); return 0; }\n'
            "int main(void) { pthread_t t[16];\n"
            "  for (long i = 0; i < 16; i++) if (pthread_create(&t[i], 0, run, (void *)i)) return 1;\n"
            "  for (int i = 0; i < 16; i++) pthread_join(t[i], 0);\n"
            '  printf("done\\n"); return 0; }\n'
        ),
        "broken": "int main(void) { return undefined_name; }\n",
    },
    "cpp": {
        "hello": (
            "#include <iostream>\n#include <string>\n"
            "int main(int argc, char **argv) {\n"
            "  std::string line; std::getline(std::cin, line);\n"
            '  std::cout << "hello " << line << "\\n";\n'
            '  for (int i = 1; i < argc; i++) std::cout << (i > 1 ? "," : "") << argv[i];\n'
            '  std::cout << "\\n";\n}\n'
        ),
        "crash": ("#include <vector>\nint main() { std::vector<int> v; return v.at(3); }\n"),
        "spin": "int main() { for (;;) {} }\n",
        "hog": (
            "#include <vector>\n#include <cstring>\n"
            "int main() { std::vector<char *> v; for (;;) { char *p = new char[16 << 20];"
            " std::memset(p, 1, 16 << 20); v.push_back(p); } }\n"
        ),
        "threads": (
            "#include <iostream>\n#include <mutex>\n#include <thread>\n#include <vector>\n"
            "int main() { std::mutex m; std::vector<std::thread> ts;\n"
            "  for (int i = 0; i < 16; i++) ts.emplace_back([i, &m] {"
            ' std::lock_guard<std::mutex> g(m); std::cout << "t" << i << "\\n"; });\n'
            '  for (auto &t : ts) t.join();\n  std::cout << "done\\n"; }\n'
        ),
        "broken": "int main() { return undefined_name; }\n",
    },
    "go": {
        "hello": (
            'package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n\t"strings"\n)\n\n'
            "func main() {\n"
            "\tline, _ := bufio.NewReader(os.Stdin).ReadString('\\n')\n"
            '\tfmt.Println("hello " + strings.TrimSpace(line))\n'
            '\tfmt.Println(strings.Join(os.Args[1:], ","))\n}\n'
        ),
        "crash": 'package main\n\nfunc main() {\n\tvar m map[string]int\n\tm["x"] = 1\n}\n',
        "spin": "package main\n\nfunc main() {\n\tfor {\n\t}\n}\n",
        "hog": (
            "package main\n\nvar keep [][]byte\n\nfunc main() {\n\tfor {\n"
            "\t\tb := make([]byte, 16<<20)\n\t\tfor i := range b {\n\t\t\tb[i] = 1\n\t\t}\n"
            "\t\tkeep = append(keep, b)\n\t}\n}\n"
        ),
        "threads": (
            'package main\n\nimport (\n\t"fmt"\n\t"runtime"\n\t"sync"\n)\n\n'
            "func main() {\n\tvar wg sync.WaitGroup\n\tvar mu sync.Mutex\n"
            "\tfor i := 0; i < 16; i++ {\n\t\twg.Add(1)\n"
            "\t\tgo func(i int) {\n\t\t\tdefer wg.Done()\n"
            "\t\t\truntime.LockOSThread()\n"
            '\t\t\tmu.Lock()\n\t\t\tfmt.Printf("t%d\\n", i)\n\t\t\tmu.Unlock()\n'
            "\t\t}(i)\n\t}\n\twg.Wait()\n"
            '\tfmt.Println("done")\n}\n'
        ),
        "broken": 'package main\n\nfunc main() {\n\tvar x int = "no"\n}\n',
    },
    "java": {
        "hello": (
            "import java.io.*;\n\npublic class Hello {\n"
            "  public static void main(String[] args) throws IOException {\n"
            "    String line = new BufferedReader(new InputStreamReader(System.in)).readLine();\n"
            '    System.out.println("hello " + (line == null ? "" : line.trim()));\n'
            '    System.out.println(String.join(",", args));\n  }\n}\n'
        ),
        "crash": (
            "public class Main {\n  public static void main(String[] args) {\n"
            "    Object o = null;\n    o.toString();\n  }\n}\n"
        ),
        "spin": "public class Main {\n  public static void main(String[] a) { for (;;) {} }\n}\n",
        "hog": (
            "import java.util.*;\n\npublic class Main {\n  public static void main(String[] a) {\n"
            "    List<long[]> keep = new ArrayList<>();\n"
            "    for (;;) keep.add(new long[2 << 20]);\n  }\n}\n"
        ),
        "threads": (
            "public class Main {\n  public static void main(String[] a) throws Exception {\n"
            "    Thread[] ts = new Thread[16];\n"
            "    for (int i = 0; i < 16; i++) { final int n = i;"
            ' ts[i] = new Thread(() -> System.out.println("t" + n)); ts[i].start(); }\n'
            '    for (Thread t : ts) t.join();\n    System.out.println("done");\n  }\n}\n'
        ),
        "broken": 'public class Main {\n  public static void main(String[] a) { int x = "no"; }\n}\n',
    },
    "rust": {
        "hello": (
            "use std::io::Read;\n\nfn main() {\n"
            "    let mut input = String::new();\n"
            "    std::io::stdin().read_to_string(&mut input).unwrap();\n"
            '    println!("hello {}", input.trim());\n'
            '    println!("{}", std::env::args().skip(1).collect::<Vec<_>>().join(","));\n}\n'
        ),
        "crash": 'fn main() {\n    let v: Vec<i32> = Vec::new();\n    println!("{}", v[3]);\n}\n',
        "spin": "fn main() {\n    loop {\n        std::hint::spin_loop();\n    }\n}\n",
        "hog": (
            "fn main() {\n    let mut keep = Vec::new();\n    loop {\n"
            "        keep.push(vec![1u8; 16 << 20]);\n    }\n}\n"
        ),
        "threads": (
            "fn main() {\n    let ts: Vec<_> = (0..16)\n"
            '        .map(|i| std::thread::spawn(move || println!("t{}", i)))\n'
            "        .collect();\n    for t in ts {\n        t.join().unwrap();\n    }\n"
            '    println!("done");\n}\n'
        ),
        "broken": 'fn main() {\n    let x: i32 = "no";\n}\n',
    },
    "ruby": {
        "hello": 'puts "hello #{$stdin.read.strip}"\nputs ARGV.join(",")\n',
        "crash": "nil.boom\n",
        "spin": "loop {}\n",
        "hog": "keep = []\nloop { keep << ('x' * (16 << 20)) }\n",
        "threads": (
            "m = Mutex.new\n"
            'ts = (0...16).map { |i| Thread.new { m.synchronize { puts "t#{i}" } } }\n'
            "ts.each(&:join)\nputs 'done'\n"
        ),
    },
    "php": {
        "hello": (
            "<?php\n$in = trim(stream_get_contents(STDIN));\n"
            'echo "hello $in\\n";\necho implode(",", array_slice($argv, 1)), "\\n";\n'
        ),
        "crash": "<?php\nthrow new RuntimeException('boom');\n",
        "spin": "<?php\nwhile (true) {}\n",
        "hog": "<?php\n$keep = [];\nwhile (true) { $keep[] = str_repeat('x', 16 << 20); }\n",
        "threads": (
            "<?php\n$procs = [];\n"
            "for ($i = 0; $i < 16; $i++) {\n"
            "  $procs[] = proc_open(['php', '-r', \"echo 't$i' . PHP_EOL;\"], [1 => STDOUT], $pipes);\n"
            '}\nforeach ($procs as $p) proc_close($p);\necho "done\\n";\n'
        ),
    },
    "csharp": {
        "hello": (
            "using System;\n\nclass Program {\n  static void Main(string[] args) {\n"
            "    string input = Console.In.ReadToEnd();\n"
            '    Console.WriteLine("hello " + input.Trim());\n'
            '    Console.WriteLine(string.Join(",", args));\n  }\n}\n'
        ),
        "crash": (
            "using System;\n\nclass Program {\n  static void Main() {\n"
            "    object o = null;\n    Console.WriteLine(o.ToString());\n  }\n}\n"
        ),
        "spin": "class Program {\n  static void Main() { for (;;) {} }\n}\n",
        "hog": (
            "using System.Collections.Generic;\n\nclass Program {\n  static void Main() {\n"
            "    var keep = new List<long[]>();\n"
            "    for (;;) keep.Add(new long[2 << 20]);\n  }\n}\n"
        ),
        "threads": (
            "using System;\nusing System.Threading;\n\nclass Program {\n"
            "  static void Main() {\n    var ts = new Thread[16];\n"
            "    for (int i = 0; i < 16; i++) { int n = i;"
            ' ts[i] = new Thread(() => Console.WriteLine("t" + n)); ts[i].Start(); }\n'
            '    foreach (var t in ts) t.Join();\n    Console.WriteLine("done");\n  }\n}\n'
        ),
        "broken": 'class Program {\n  static void Main() { int x = "no"; }\n}\n',
    },
}

# The runtime error of `crash`: (exit code, signal, a piece of its stderr).
ERRORS: dict[str, tuple[int | None, str | None, str]] = {
    "python": (1, None, "ValueError: boom"),
    "javascript": (1, None, "TypeError"),
    "typescript": (1, None, "Error: boom 1"),
    "bash": (127, None, "no_such_command_here"),
    "c": (None, "SIGSEGV", ""),
    "cpp": (None, "SIGABRT", "std::out_of_range"),
    "go": (2, None, "assignment to entry in nil map"),
    "java": (1, None, "java.lang.NullPointerException"),
    "rust": (101, None, "index out of bounds"),
    "ruby": (1, None, "NoMethodError"),
    "php": (255, None, "RuntimeException: boom"),
    "csharp": (1, None, "System.NullReferenceException"),
}

# The compiler's message for `broken`: a piece of the build's output.
BUILD_ERRORS: dict[str, str] = {
    "typescript": "TS2322",
    "c": "undefined_name",
    "cpp": "undefined_name",
    "go": "cannot use",
    "java": "incompatible types",
    "rust": "mismatched types",
    "csharp": "CS0029",
}
