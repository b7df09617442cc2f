// A page brought back by Back/Forward from the browser's memory shows what was true
// when it was left: a session that ended since (signed out elsewhere, or idle past its
// limit on a shared computer) would show its user's data again. Ask the server anew.
addEventListener("pageshow", (event) => {
  if (event.persisted) location.reload();
});

// A page left unused past its session's idle limit (minutes on a shared computer) must
// not go on showing its user's cart and devices to whoever sits down next: asked again,
// the server shows the sign-in form, or the same page if the session lives on.
// Past about 24 days a timer's delay wraps around and fires at once: no timer then.
const idle = Number(document.body.dataset.idleSeconds || 0);
if (idle > 0 && idle < 2_000_000) setTimeout(() => location.reload(), (idle + 1) * 1000);
