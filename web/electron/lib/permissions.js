// Media permissions: the app's own page may capture audio, and nothing else may have anything.
//
// Electron grants every permission by default; a page that navigated elsewhere (a link, an injected
// frame) would inherit the microphone. Both handlers are needed: the request handler answers
// getUserMedia, the check handler answers permission queries and enumerateDevices labels, and its
// first call for "media" comes without a mediaType.
"use strict";

/** The origin of a URL, or "" for anything unparseable. */
function originOf(url) {
  try {
    const parsed = new URL(url);
    // app://voicepeer/index.html: URL.origin is "null" for non-special schemes, so build it.
    return parsed.origin !== "null" ? parsed.origin : `${parsed.protocol}//${parsed.host}`;
  } catch {
    return "";
  }
}

/**
 * Whether `permission` may be granted. `mediaTypes` is the request's list (["audio"], ["video"], ...)
 * or a check's single `mediaType` wrapped in a list; undefined or empty when the check does not say.
 */
function allowed({ permission, mediaTypes, origin, appOrigin }) {
  if (originOf(origin) !== appOrigin) return false;
  if (permission !== "media") return false;
  const types = (mediaTypes || []).filter(Boolean);
  if (types.length === 0) return true; // the first check, before a type is known: audio is all we ask
  return types.every((type) => type === "audio");
}

/** Installs both handlers on an Electron `session` for the app at `appOrigin`; returns the decisions
 * made, newest last, for the log. */
function installPermissionHandlers(session, appOrigin, log = () => {}) {
  session.setPermissionRequestHandler((webContents, permission, callback, details = {}) => {
    const origin = details.requestingUrl || (webContents && webContents.getURL && webContents.getURL()) || "";
    const ok = allowed({ permission, mediaTypes: details.mediaTypes, origin, appOrigin });
    if (!ok) log(`denied ${permission} ${JSON.stringify(details.mediaTypes || [])} to ${originOf(origin)}`);
    callback(ok);
  });
  session.setPermissionCheckHandler((webContents, permission, requestingOrigin, details = {}) => {
    const mediaTypes = details.mediaType ? [details.mediaType] : [];
    return allowed({ permission, mediaTypes, origin: requestingOrigin || details.securityOrigin || "", appOrigin });
  });
}

module.exports = { allowed, installPermissionHandlers, originOf };
