(function () {
  var tip = document.getElementById("map-tip"), store = document.getElementById("map-thumbs");
  if (!tip || !store) return;
  var img = tip.querySelector("img"), cap = tip.querySelector("span");
  document.querySelectorAll("svg.cmap.live circle[data-i]").forEach(function (c) {
    c.addEventListener("mouseenter", function () {
      var t = document.getElementById("mt-" + c.getAttribute("data-i"));
      img.src = t ? t.src : ""; cap.textContent = c.getAttribute("data-cap") || ""; tip.style.display = "block";
    });
    c.addEventListener("mousemove", function (e) { tip.style.left = (e.pageX + 14) + "px"; tip.style.top = (e.pageY + 14) + "px"; });
    c.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  });
})();
