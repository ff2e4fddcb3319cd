// Node.js's half of a pre-started run (see executor/runner.py, "_Prestarted"): loaded with
// `--require` before the main module, it blocks until the runner hands over the run on the
// control pipe, the process's highest descriptor (the program's arguments, each ended by a NUL
// byte; then end of file), puts them in process.argv, closes the pipe and returns: Node.js
// then loads the main module as it would have at start, its own descriptors numbered as then.
// It leaves nothing the program could see: no global, no module in require.cache, no
// `--require` in process.execArgv (which child_process.fork passes on).
'use strict';
{
  // A held start (hold.c) has read the arguments before Node.js started, and passes them in
  // the environment, hex-encoded: no module is needed to take them.
  const held = process.env.EXECUTOR_HELD_ARGS;
  let args;
  if (held !== undefined) {
    delete process.env.EXECUTOR_HELD_ARGS;
    args = Buffer.from(held, 'hex').toString('utf8').split('\0');
  } else if (require('worker_threads').isMainThread) {
    // Workers run the preloads too: only the main thread waits for the run.
    const fs = require('fs');
    const control = Math.max(...fs.readdirSync('/proc/self/fd').map(Number));
    const parts = [];
    const chunk = Buffer.allocUnsafe(65536);
    for (;;) {
      const n = fs.readSync(control, chunk, 0, chunk.length, null);
      if (n === 0) break;
      parts.push(Buffer.from(chunk.subarray(0, n)));
    }
    fs.closeSync(control);
    args = Buffer.concat(parts).toString('utf8').split('\0');
  }
  if (args !== undefined) {
    args.pop();
    process.argv.splice(2, process.argv.length - 2, ...args);
  }
  // A held start's preload takes its variable out itself; a runtime it could not be loaded
  // into (a static one) still has it.
  if (process.env.LD_PRELOAD === '/opt/executor/hold.so') delete process.env.LD_PRELOAD;
  const at = process.execArgv.indexOf('--require');
  if (at >= 0 && process.execArgv[at + 1] === __filename) process.execArgv.splice(at, 2);
  delete require.cache[__filename];
}
