// Starts asciinema-player on each terminal of a session page (no inline script: the CSP forbids it).
for (const el of document.querySelectorAll('.player[data-cast]')) {
  const player = AsciinemaPlayer.create(el.dataset.cast, el, { fit: 'width', idleTimeLimit: 2, controls: true });
  el.player = player;
  el.dataset.ready = '1';
}
