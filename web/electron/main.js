// Electron entry point: everything lives in lib/, which takes Electron's objects as arguments.
"use strict";

require("./lib/app").start(require("electron"));
