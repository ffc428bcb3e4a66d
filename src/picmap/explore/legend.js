// picmap explorer pages: the class legend both pages share. Names are shown with textContent.
"use strict";
// One button per class (swatch, name, count) in `container`; a click toggles the class off or
// on and calls `toggled(c, off)`.
function buildClassLegend(container, names, colors, counts, toggled) {
  names.forEach((name, c) => {
    const item = document.createElement("button");
    item.type = "button";
    item.className = "legend-item";
    item.title = "Click to hide or show this class";
    const parts = ["swatch", "name", "count"].map((cls) => {
      const span = document.createElement("span");
      span.className = cls;
      return span;
    });
    parts[0].style.background = colors[c];
    parts[1].textContent = name;
    parts[2].textContent = counts[c];
    item.append(...parts);
    item.addEventListener("click", () => toggled(c, item.classList.toggle("off")));
    container.append(item);
  });
}
