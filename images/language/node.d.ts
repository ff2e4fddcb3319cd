// The Node.js globals a TypeScript program may use, for type checking: Debian ships no
// @types/node. Loosely typed, so that any use of them checks; the program's own types are
// checked as usual.
declare var process: any;
declare var require: any;
declare var module: any;
declare var exports: any;
declare var Buffer: any;
declare var __dirname: string;
declare var __filename: string;
declare var console: any;
declare var global: any;
declare function setTimeout(callback: (...args: any[]) => void, ms?: number, ...args: any[]): any;
declare function setInterval(callback: (...args: any[]) => void, ms?: number, ...args: any[]): any;
declare function setImmediate(callback: (...args: any[]) => void, ...args: any[]): any;
declare function clearTimeout(handle: any): void;
declare function clearInterval(handle: any): void;
declare function clearImmediate(handle: any): void;
declare function queueMicrotask(callback: () => void): void;
declare var TextEncoder: any;
declare var TextDecoder: any;
declare var URL: any;
declare var URLSearchParams: any;
