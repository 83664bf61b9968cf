"""The synthetic marketplace's vocabulary: a 3-level category tree, attributes and query words.

Each leaf line reads `Department > Category > Leaf | nouns | attribute kinds | median price | features`:
the first noun is the canonical head term of titles, the rest are synonyms shoppers type; features
are words titles use. Brands are generated per department (see synth.py).
"""

from __future__ import annotations

from dataclasses import dataclass

LEAVES = """
Electronics > Audio > Headphones | headphones, headset, earphones | colour | 60 | wireless, noise cancelling, over-ear, bluetooth, foldable
Electronics > Audio > Earbuds | earbuds, in-ear headphones, earpods | colour | 45 | true wireless, sport, waterproof, bluetooth
Electronics > Audio > Bluetooth Speakers | bluetooth speaker, portable speaker, wireless speaker | colour | 50 | waterproof, bass boost, outdoor, mini
Electronics > Audio > Soundbars | soundbar, tv speaker, sound bar | colour | 180 | dolby, 2.1 channel, wall mountable, slim
Electronics > Computers > Laptops | laptop, notebook, notebook computer | colour, size | 750 | 16gb ram, ssd, lightweight, gaming, touchscreen
Electronics > Computers > Monitors | monitor, computer screen, display | size | 220 | 4k, ips, 144hz, curved, ultrawide
Electronics > Computers > Keyboards | keyboard, computer keyboard | colour | 55 | mechanical, wireless, backlit, ergonomic
Electronics > Computers > Computer Mice | mouse, computer mouse, wireless mouse | colour | 25 | ergonomic, wireless, silent, gaming
Electronics > Phones > Smartphones | smartphone, phone, cell phone, mobile phone | colour, capacity | 480 | unlocked, 5g, dual sim, triple camera
Electronics > Phones > Phone Cases | phone case, case, phone cover | colour, material | 15 | shockproof, slim, clear, magnetic
Electronics > Phones > Phone Chargers | phone charger, charger, charging cable | colour, pack | 18 | fast charging, usb-c, wall, braided
Electronics > Cameras > Digital Cameras | camera, digital camera | colour | 520 | mirrorless, 4k video, compact, zoom
Electronics > Cameras > Action Cameras | action camera, action cam, sports camera | colour | 210 | waterproof, 4k, stabilized, helmet mount
Electronics > Cameras > Tripods | tripod, camera stand | colour, metal | 40 | lightweight, travel, adjustable, phone mount
Home & Kitchen > Kitchen Appliances > Coffee Makers | coffee maker, coffee machine, espresso machine | colour, capacity | 95 | programmable, drip, single serve, thermal carafe
Home & Kitchen > Kitchen Appliances > Blenders | blender, smoothie maker, mixer | colour, capacity | 70 | high speed, personal, countertop, glass jar
Home & Kitchen > Kitchen Appliances > Toasters | toaster, toaster oven | colour | 40 | 4 slice, wide slot, convection, stainless
Home & Kitchen > Kitchen Appliances > Air Fryers | air fryer, fryer | colour, capacity | 90 | digital, oil free, dual basket, nonstick
Home & Kitchen > Kitchen Appliances > Electric Kettles | electric kettle, kettle, water boiler | colour, capacity | 35 | cordless, glass, temperature control, fast boil
Home & Kitchen > Cookware > Frying Pans | frying pan, skillet, fry pan | metal, size | 35 | nonstick, induction, oven safe, ceramic coated
Home & Kitchen > Cookware > Saucepans | saucepan, pot, sauce pan | metal, capacity | 40 | with lid, induction, tri-ply, dishwasher safe
Home & Kitchen > Cookware > Knife Sets | knife set, kitchen knives, knives | metal, pack | 80 | german steel, with block, sharp, forged
Home & Kitchen > Cookware > Baking Sheets | baking sheet, baking tray, cookie sheet | metal, pack | 20 | nonstick, rimmed, heavy duty, half sheet
Home & Kitchen > Bedding > Sheet Sets | sheet set, bed sheets, sheets | colour, fabric, bed_size | 45 | deep pocket, 400 thread count, breathable, wrinkle free
Home & Kitchen > Bedding > Pillows | pillow, bed pillow | fabric, pack | 30 | memory foam, cooling, hypoallergenic, down alternative
Home & Kitchen > Bedding > Comforters | comforter, duvet, quilt | colour, fabric, bed_size | 70 | all season, lightweight, reversible, plush
Home & Kitchen > Bedding > Blankets | blanket, throw, throw blanket | colour, fabric | 30 | fleece, weighted, soft, knitted
Home & Kitchen > Furniture > Office Chairs | office chair, desk chair, computer chair | colour, material | 160 | ergonomic, lumbar support, mesh, swivel
Home & Kitchen > Furniture > Desks | desk, computer desk, writing desk | colour, material | 180 | standing, l-shaped, adjustable height, compact
Home & Kitchen > Furniture > Bookshelves | bookshelf, bookcase, shelf | colour, material | 90 | 5-tier, industrial, corner, ladder
Home & Kitchen > Furniture > Sofas | sofa, couch, loveseat | colour, fabric | 650 | sectional, convertible, modern, sleeper
Home & Kitchen > Home Decor > Lamps | lamp, table lamp, desk lamp | colour, material | 40 | led, dimmable, touch control, bedside
Home & Kitchen > Home Decor > Rugs | rug, area rug, carpet | colour, size | 90 | washable, non-slip, shag, vintage
Home & Kitchen > Home Decor > Curtains | curtains, drapes, window curtains | colour, fabric | 35 | blackout, thermal, sheer, grommet
Home & Kitchen > Home Decor > Wall Clocks | wall clock, clock | colour, material | 30 | silent, large, modern, battery operated
Clothing > Women's Clothing > Dresses | dress, women's dress | colour, fabric, apparel_size | 45 | midi, summer, casual, floral
Clothing > Women's Clothing > Blouses | blouse, women's top, shirt | colour, fabric, apparel_size | 30 | button down, v-neck, long sleeve, chiffon
Clothing > Women's Clothing > Leggings | leggings, yoga pants, tights | colour, fabric, apparel_size | 25 | high waist, squat proof, pocket, stretch
Clothing > Men's Clothing > T-Shirts | t-shirt, tee, tshirt | colour, fabric, apparel_size | 18 | crew neck, slim fit, graphic, pack of 3
Clothing > Men's Clothing > Jeans | jeans, denim pants, denim | colour, apparel_size | 50 | slim fit, straight leg, stretch, relaxed
Clothing > Men's Clothing > Jackets | jacket, coat, outerwear | colour, fabric, apparel_size | 110 | waterproof, puffer, windbreaker, hooded
Clothing > Men's Clothing > Hoodies | hoodie, sweatshirt, hooded sweatshirt | colour, fabric, apparel_size | 40 | pullover, zip up, fleece lined, oversized
Clothing > Shoes > Running Shoes | running shoes, sneakers, trainers | colour, shoe_size | 90 | lightweight, cushioned, breathable, trail
Clothing > Shoes > Boots | boots, ankle boots, winter boots | colour, material, shoe_size | 110 | waterproof, leather, insulated, chelsea
Clothing > Shoes > Sandals | sandals, slides, flip flops | colour, shoe_size | 30 | comfort, arch support, beach, strappy
Clothing > Accessories > Backpacks | backpack, rucksack, bag | colour, fabric | 45 | laptop, travel, water resistant, anti theft
Clothing > Accessories > Wallets | wallet, purse, card holder | colour, material | 30 | rfid blocking, slim, bifold, minimalist
Clothing > Accessories > Sunglasses | sunglasses, shades, sun glasses | colour | 25 | polarized, uv400, aviator, retro
Clothing > Accessories > Watches | watch, wristwatch | colour, metal | 120 | analog, waterproof, chronograph, minimalist
Sports & Outdoors > Fitness > Yoga Mats | yoga mat, exercise mat, workout mat | colour, material | 28 | non-slip, extra thick, eco friendly, with strap
Sports & Outdoors > Fitness > Dumbbells | dumbbells, weights, hand weights | colour, pack | 60 | adjustable, neoprene, hex, rubber coated
Sports & Outdoors > Fitness > Resistance Bands | resistance bands, exercise bands, workout bands | colour, pack | 18 | loop, with handles, fabric, heavy
Sports & Outdoors > Fitness > Jump Ropes | jump rope, skipping rope | colour | 12 | speed, weighted, adjustable, tangle free
Sports & Outdoors > Camping > Tents | tent, camping tent | colour, size | 150 | waterproof, 4 person, instant, backpacking
Sports & Outdoors > Camping > Sleeping Bags | sleeping bag, sleep bag | colour, fabric | 60 | 3 season, lightweight, mummy, cold weather
Sports & Outdoors > Camping > Camping Chairs | camping chair, folding chair, camp chair | colour | 40 | portable, with cup holder, heavy duty, lightweight
Sports & Outdoors > Camping > Headlamps | headlamp, head torch, head light | colour, pack | 20 | rechargeable, led, waterproof, bright
Sports & Outdoors > Cycling > Bike Helmets | bike helmet, bicycle helmet, cycling helmet | colour, apparel_size | 50 | adjustable, lightweight, with light, ventilated
Sports & Outdoors > Cycling > Bike Lights | bike light, bicycle light, cycling light | colour, pack | 25 | usb rechargeable, front and rear, waterproof, bright
Sports & Outdoors > Cycling > Bike Locks | bike lock, bicycle lock, u-lock | colour, metal | 30 | heavy duty, combination, cable, anti theft
Sports & Outdoors > Water Sports > Swim Goggles | swim goggles, swimming goggles, goggles | colour | 15 | anti fog, uv protection, no leak, adult
Sports & Outdoors > Water Sports > Water Bottles | water bottle, bottle, drink bottle | colour, metal, capacity | 22 | insulated, bpa free, leak proof, with straw
Beauty & Personal Care > Skin Care > Moisturizers | moisturizer, face cream, lotion | capacity | 25 | hydrating, spf 30, fragrance free, night
Beauty & Personal Care > Skin Care > Serums | serum, face serum | capacity | 28 | vitamin c, hyaluronic acid, retinol, brightening
Beauty & Personal Care > Skin Care > Sunscreens | sunscreen, sunblock, spf | capacity | 15 | spf 50, water resistant, mineral, broad spectrum
Beauty & Personal Care > Hair Care > Shampoos | shampoo, hair shampoo | capacity | 12 | sulfate free, anti dandruff, volumizing, moisturizing
Beauty & Personal Care > Hair Care > Hair Dryers | hair dryer, blow dryer, hairdryer | colour | 55 | ionic, lightweight, diffuser, fast drying
Beauty & Personal Care > Hair Care > Hair Straighteners | hair straightener, flat iron, straightener | colour | 45 | ceramic, titanium, dual voltage, adjustable temperature
Beauty & Personal Care > Shaving > Electric Shavers | electric shaver, razor, shaver | colour | 80 | rotary, foil, wet and dry, cordless
Beauty & Personal Care > Shaving > Beard Trimmers | beard trimmer, trimmer, hair clipper | colour | 40 | cordless, precision, waterproof, with guards
Beauty & Personal Care > Makeup > Lipsticks | lipstick, lip color, lip stick | colour, pack | 12 | matte, long lasting, moisturizing, nude
Beauty & Personal Care > Makeup > Foundations | foundation, makeup foundation | capacity | 22 | full coverage, liquid, oil free, lightweight
Toys & Games > Building Toys > Building Blocks | building blocks, building set, bricks | pack | 35 | creative, compatible, educational, 500 pieces
Toys & Games > Building Toys > Magnetic Tiles | magnetic tiles, magnet tiles, magnetic blocks | pack | 40 | stem, 3d, clear, starter set
Toys & Games > Games > Board Games | board game, family game, strategy game | pack | 30 | for kids, for adults, party, cooperative
Toys & Games > Games > Puzzles | puzzle, jigsaw puzzle, jigsaw | pack | 18 | 1000 piece, landscape, for adults, kids
Toys & Games > Games > Card Games | card game, playing cards, cards | pack | 12 | family, party, travel, strategy
Toys & Games > Dolls & Figures > Action Figures | action figure, figure, figurine | size | 20 | articulated, collectible, superhero, 6 inch
Toys & Games > Dolls & Figures > Dolls | doll, baby doll, fashion doll | colour, size | 25 | with accessories, soft body, dress up, talking
Toys & Games > Dolls & Figures > Plush Toys | plush toy, stuffed animal, teddy bear | colour, size | 18 | soft, cuddly, giant, kawaii
Toys & Games > Outdoor Play > Kites | kite, kids kite | colour, size | 15 | easy to fly, large, delta, rainbow
Toys & Games > Outdoor Play > Scooters | scooter, kick scooter, kids scooter | colour | 60 | foldable, light up wheels, adjustable, 3 wheel
Toys & Games > Outdoor Play > Water Guns | water gun, squirt gun, water blaster | colour, pack | 15 | long range, pump action, pool toy, summer
Garden & Tools > Power Tools > Drills | drill, cordless drill, drill driver | colour | 90 | 20v, brushless, with battery, hammer
Garden & Tools > Power Tools > Circular Saws | circular saw, power saw, saw | colour | 110 | 7-1/4 inch, corded, laser guide, lightweight
Garden & Tools > Power Tools > Sanders | sander, orbital sander, power sander | colour | 60 | random orbit, dust collection, variable speed, palm
Garden & Tools > Hand Tools > Screwdriver Sets | screwdriver set, screwdrivers, screwdriver | metal, pack | 25 | magnetic, precision, insulated, ratcheting
Garden & Tools > Hand Tools > Hammers | hammer, claw hammer | metal | 20 | fiberglass handle, anti vibration, 16 oz, framing
Garden & Tools > Hand Tools > Tool Sets | tool set, tool kit, toolbox | metal, pack | 70 | household, mechanics, with case, 200 piece
Garden & Tools > Gardening > Garden Hoses | garden hose, hose, water hose | colour, size | 35 | expandable, kink free, heavy duty, with nozzle
Garden & Tools > Gardening > Planters | planter, flower pot, plant pot | colour, material | 25 | with drainage, self watering, large, hanging
Garden & Tools > Gardening > Pruning Shears | pruning shears, secateurs, garden shears | metal | 18 | bypass, ergonomic, sharp, heavy duty
Garden & Tools > Outdoor Power > Lawn Mowers | lawn mower, mower, lawnmower | colour | 320 | cordless, self propelled, push, mulching
Garden & Tools > Outdoor Power > Leaf Blowers | leaf blower, blower | colour | 110 | cordless, backpack, handheld, variable speed
Garden & Tools > Outdoor Power > Pressure Washers | pressure washer, power washer, jet washer | colour | 190 | electric, 2000 psi, portable, with nozzles
Pet Supplies > Dogs > Dog Food | dog food, dry dog food, puppy food | capacity | 45 | grain free, high protein, natural, small breed
Pet Supplies > Dogs > Dog Beds | dog bed, pet bed | colour, size | 40 | orthopedic, washable, calming, waterproof
Pet Supplies > Dogs > Dog Leashes | dog leash, lead, leash | colour, size | 15 | retractable, reflective, heavy duty, hands free
Pet Supplies > Dogs > Dog Toys | dog toy, chew toy, squeaky toy | colour, pack | 12 | durable, for aggressive chewers, rope, interactive
Pet Supplies > Cats > Cat Food | cat food, wet cat food, kitten food | capacity | 30 | grain free, indoor, salmon, chicken
Pet Supplies > Cats > Cat Litter | cat litter, kitty litter, litter | capacity | 22 | clumping, unscented, low dust, odor control
Pet Supplies > Cats > Cat Trees | cat tree, cat tower, scratching post | colour, size | 70 | multi level, with condo, sisal, large
Pet Supplies > Aquarium > Fish Tanks | fish tank, aquarium, tank | capacity | 80 | glass, led light, starter kit, filter
Pet Supplies > Aquarium > Aquarium Filters | aquarium filter, tank filter, fish filter | size | 30 | quiet, hang on back, internal, sponge
Office Products > Writing > Pens | pens, ballpoint pens, gel pens | colour, pack | 10 | fine point, smooth, retractable, assorted
Office Products > Writing > Notebooks | notebook, journal, notepad | colour, pack | 12 | lined, hardcover, spiral, a5
Office Products > Writing > Markers | markers, highlighters, felt pens | pack | 14 | permanent, washable, dual tip, fine
Office Products > Office Electronics > Printers | printer, inkjet printer, laser printer | colour | 160 | wireless, all-in-one, duplex, color
Office Products > Office Electronics > Shredders | shredder, paper shredder | colour | 70 | cross cut, micro cut, 10 sheet, quiet
Office Products > Office Electronics > Calculators | calculator, scientific calculator | colour | 15 | graphing, solar, desktop, large display
Office Products > Organization > Desk Organizers | desk organizer, organizer, desk caddy | colour, material | 20 | mesh, with drawers, rotating, wooden
Office Products > Organization > File Folders | file folders, folders, document folder | colour, pack | 13 | letter size, expanding, hanging, plastic
Office Products > Organization > Label Makers | label maker, labeler, label printer | colour | 35 | portable, bluetooth, with tape, handheld
"""

ATTRIBUTES: dict[str, tuple[str, list[str]]] = {
    # kind: (attribute key stored on products, values)
    "colour": ("colour", ["black", "white", "grey", "silver", "red", "blue", "navy", "green", "pink", "beige", "brown", "gold", "purple", "yellow"]),
    "fabric": ("material", ["cotton", "linen", "wool", "polyester", "silk", "fleece", "microfiber", "bamboo"]),
    "metal": ("material", ["stainless steel", "aluminum", "cast iron", "carbon steel", "copper", "titanium"]),
    "material": ("material", ["wood", "plastic", "metal", "glass", "leather", "bamboo", "ceramic", "fabric"]),
    "apparel_size": ("size", ["xs", "s", "m", "l", "xl", "xxl"]),
    "shoe_size": ("size", ["6", "7", "8", "9", "10", "11", "12"]),
    "bed_size": ("size", ["twin", "full", "queen", "king"]),
    "size": ("size", ["small", "medium", "large", "extra large"]),
    "capacity": ("capacity", ["250 ml", "500 ml", "1 l", "1.5 l", "2 l", "5 l"]),
    "pack": ("pack", ["1 pack", "2 pack", "3 pack", "6 pack", "12 pack"]),
}
# how shoppers may type an attribute value instead of the catalog's word
VALUE_SYNONYMS = {
    "grey": ["gray"], "navy": ["dark blue"], "beige": ["tan", "cream"], "stainless steel": ["stainless", "steel"],
    "aluminum": ["aluminium"], "xl": ["extra large"], "xxl": ["2xl"], "s": ["small"], "m": ["medium"], "l": ["large"],
    "microfiber": ["microfibre"], "1 l": ["1 liter", "1 litre"], "2 l": ["2 liter"], "5 l": ["5 liter"],
    "2 pack": ["pack of 2", "set of 2"], "6 pack": ["pack of 6"], "12 pack": ["pack of 12"],
}
HYPE = ["hot sale", "best seller", "2026 new", "top rated", "upgraded", "limited deal", "premium quality", "viral"]
CHEAP_WORDS = ["cheap", "budget", "affordable"]
PREMIUM_WORDS = ["premium", "luxury", "high end"]


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, str, str]
    nouns: tuple[str, ...]
    kinds: tuple[str, ...]
    median_price: float
    features: tuple[str, ...]

    @property
    def category(self) -> str:
        return " > ".join(self.path)


def leaves() -> list[Leaf]:
    out = []
    for line in LEAVES.strip().splitlines():
        path, nouns, kinds, price, feats = (x.strip() for x in line.split("|"))
        p = tuple(x.strip() for x in path.split(">"))
        assert len(p) == 3, line
        out.append(Leaf(p, tuple(n.strip() for n in nouns.split(",")), tuple(k.strip() for k in kinds.split(",")),
                        float(price), tuple(f.strip() for f in feats.split(","))))
    return out
