// A page brought back by Back/Forward from the browser's memory shows what was true
// when it was left: a session that ended since (signed out elsewhere, or idle past its
// limit on a shared computer) would show its user's data again. Ask the server anew.
addEventListener("pageshow", (event) => {
  if (event.persisted) location.reload();
});
